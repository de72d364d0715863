//! The generation loop: prefill the prompt (reusing whatever prefix the session's KV cache
//! already holds), then sample one token at a time until an end-of-sequence id, a stop string,
//! the token limit or the caller says stop. Text is streamed in whole characters, and text that
//! could be the start of a stop string is held back until it is known not to be one.

use crate::sampler::{Sampler, SamplingParams};
use mideum_model::{
    BatchItem, KvPool, LoadedModel, Logits, ModelError, Result, SeqKv, StreamDecoder, BLOCK_TOKENS,
};
use std::time::Instant;

/// Prompt tokens are run through the model in chunks of this many, bounding activation memory.
const PREFILL_CHUNK: usize = 256;

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks, tests).
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller asked to stop (or went away).
    Cancelled,
    /// The request's deadline passed.
    Deadline,
}

#[derive(Clone, Debug)]
pub struct GenerateOutput {
    /// New token ids (an end-of-sequence token that ended the run is included).
    pub ids: Vec<u32>,
    /// The text of the new tokens, without special tokens and cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens that were served from the session's cache.
    pub cached_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

/// A sequence with its own block pool. Between requests the pool keeps the blocks of what was
/// computed, so a following request that starts with the same tokens (the next turn of a chat)
/// only computes what is new.
pub struct Session {
    pool: KvPool,
    seq: SeqKv,
    max_len: usize,
}

impl Session {
    pub fn new(model: &LoadedModel) -> Session {
        let max_len = model.ctx_size;
        // Room for the context plus one spare block per prompt chunk boundary.
        Session {
            pool: model.model.new_pool(max_len.div_ceil(BLOCK_TOKENS) + 1),
            seq: SeqKv::default(),
            max_len,
        }
    }

    pub fn cached_ids(&self) -> &[u32] {
        self.seq.tokens()
    }

    fn max_len(&self) -> usize {
        self.max_len
    }

    /// Brings the cache to `prompt` and returns the logits after its last token, plus how many
    /// prompt tokens were reused.
    fn prefill(&mut self, model: &LoadedModel, prompt: &[u32]) -> Result<(Vec<f32>, usize)> {
        if prompt.is_empty() {
            return Err(ModelError::Input(
                "the prompt is empty: at least one token is needed".into(),
            ));
        }
        if prompt.len() > self.max_len {
            return Err(ModelError::ContextOverflow {
                tokens: prompt.len(),
                context: self.max_len,
            });
        }
        // Register what the previous request computed, then start over from the longest
        // cached prefix of the new prompt.
        self.pool.release(&mut self.seq);
        let reuse = self.pool.attach_prefix(&mut self.seq, prompt);
        let rest = &prompt[reuse..];
        let n_chunks = rest.len().div_ceil(PREFILL_CHUNK);
        let mut logits = Vec::new();
        for (ci, chunk) in rest.chunks(PREFILL_CHUNK).enumerate() {
            let want = if ci + 1 == n_chunks {
                Logits::Last
            } else {
                Logits::None
            };
            let mut items = [BatchItem {
                tokens: chunk,
                seq: &mut self.seq,
                logits: want,
            }];
            logits = model
                .model
                .forward_batch(&mut self.pool, &mut items)?
                .pop()
                .unwrap_or_default();
        }
        Ok((logits, reuse))
    }

    fn step(&mut self, model: &LoadedModel, id: u32) -> Result<Vec<f32>> {
        let mut items = [BatchItem {
            tokens: &[id],
            seq: &mut self.seq,
            logits: Logits::Last,
        }];
        Ok(model
            .model
            .forward_batch(&mut self.pool, &mut items)?
            .pop()
            .unwrap_or_default())
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of some stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for s in stops {
        for (i, _) in s.char_indices().skip(1) {
            if i > best && text.ends_with(&s[..i]) {
                best = i;
            }
        }
    }
    best
}

/// Turns sampled ids into final text: whole characters only, cut before a stop string, and
/// holding back text that could still become one.
pub struct OutputText {
    decoder: StreamDecoder,
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl OutputText {
    pub fn new(stops: &[String]) -> OutputText {
        OutputText {
            decoder: StreamDecoder::new(true),
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds a token. Returns the text that became final and whether a stop string was hit.
    pub fn push(&mut self, tok: &mideum_model::Tokenizer, id: u32) -> Result<(String, bool)> {
        self.text.push_str(&self.decoder.push(tok, id)?);
        if let Some(pos) = self
            .stops
            .iter()
            .filter_map(|s| self.text.find(s.as_str()))
            .min()
        {
            self.text.truncate(pos);
            let piece = self
                .text
                .get(self.emitted..)
                .unwrap_or_default()
                .to_string();
            self.emitted = self.text.len();
            return Ok((piece, true));
        }
        let safe = self.text.len() - held_back(&self.text, &self.stops);
        if safe > self.emitted {
            let piece = self.text[self.emitted..safe].to_string();
            self.emitted = safe;
            return Ok((piece, false));
        }
        Ok((String::new(), false))
    }

    /// The rest of the text at the end of the stream (held-back characters included).
    pub fn finish(&mut self, tok: &mideum_model::Tokenizer, stopped: bool) -> Result<String> {
        if !stopped {
            self.text.push_str(&self.decoder.flush(tok)?);
        }
        let piece = self
            .text
            .get(self.emitted..)
            .unwrap_or_default()
            .to_string();
        self.emitted = self.text.len();
        Ok(piece)
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Generates a continuation of `req.prompt_ids`. `on_text` receives each new piece of text as
/// it becomes final and returns `false` to cancel.
pub fn generate(
    model: &LoadedModel,
    session: &mut Session,
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> bool,
) -> Result<GenerateOutput> {
    req.sampling.validate().map_err(ModelError::Input)?;
    let t0 = Instant::now();
    let (mut logits, cached_tokens) = session.prefill(model, &req.prompt_ids)?;
    let prefill_secs = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut sampler = Sampler::new(req.sampling.clone());
    let mut out_text = OutputText::new(&req.stop);
    let mut history = req.prompt_ids.clone();
    let mut ids = Vec::new();
    let room = session.max_len() - req.prompt_ids.len();
    let limit = req.max_tokens.min(room);
    let mut finish = FinishReason::Length;
    while ids.len() < limit {
        let id = sampler.sample(&mut logits, &history, &ids);
        ids.push(id);
        history.push(id);
        if !req.ignore_eos && model.eos_ids.contains(&id) {
            finish = FinishReason::Stop;
            break;
        }
        let (piece, stopped) = out_text.push(&model.tokenizer, id)?;
        if stopped {
            if !piece.is_empty() {
                on_text(&piece);
            }
            finish = FinishReason::Stop;
            break;
        }
        if !piece.is_empty() && !on_text(&piece) {
            finish = FinishReason::Cancelled;
            break;
        }
        if ids.len() < limit {
            logits = session.step(model, id)?;
        }
    }
    if finish != FinishReason::Cancelled {
        let rest = out_text.finish(&model.tokenizer, finish == FinishReason::Stop)?;
        if !rest.is_empty() {
            on_text(&rest);
        }
    }
    let text = out_text.text().to_string();
    Ok(GenerateOutput {
        ids,
        text,
        finish_reason: finish,
        prompt_tokens: req.prompt_ids.len(),
        cached_tokens,
        prefill_secs,
        decode_secs: t1.elapsed().as_secs_f64(),
    })
}

/// Log-probability of every token of `ids` after the first, given the tokens before it.
pub fn score(model: &LoadedModel, ids: &[u32]) -> Result<Vec<f32>> {
    if ids.len() < 2 {
        return Err(ModelError::Input(
            "scoring needs at least two tokens".into(),
        ));
    }
    let mut cache = model.new_cache();
    if ids.len() > cache.max_len() {
        return Err(ModelError::ContextOverflow {
            tokens: ids.len(),
            context: cache.max_len(),
        });
    }
    let vocab = model.model.config.vocab_size;
    let mut out = Vec::with_capacity(ids.len() - 1);
    for (ci, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
        let logits = model.model.forward(chunk, &mut cache, Logits::All)?;
        for i in 0..chunk.len() {
            let pos = ci * PREFILL_CHUNK + i;
            if pos + 1 < ids.len() {
                out.push(mideum_kernels::ops::log_softmax_at(
                    &logits[i * vocab..(i + 1) * vocab],
                    ids[pos + 1] as usize,
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec!["</tool_call>".to_string(), "끝.".to_string()];
        assert_eq!(held_back("abc</tool", &stops), 6);
        assert_eq!(held_back("abc", &stops), 0);
        assert_eq!(held_back("그것으로 끝", &stops), "끝".len());
    }
}
