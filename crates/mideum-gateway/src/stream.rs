//! Plumbing shared by the endpoints: submitting the `n` choices of a request, collecting a
//! choice's events into a whole answer, and turning merged events into a server-sent-event
//! stream. Dropping the stream (the client went away) drops the engine receivers, which the
//! scheduler notices and cancels.

use crate::error::{ApiError, ApiResult};
use crate::ServedModel;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mideum_engine::{Event, FinishReason, Request, TokenLogprob, Usage};
use std::collections::VecDeque;
use std::convert::Infallible;
use tokio::sync::mpsc::{self, UnboundedReceiver};

/// Submits one request per choice; if any is refused, the ones already queued are dropped
/// (and so cancelled).
pub fn submit_all(
    model: &ServedModel,
    reqs: Vec<Request>,
) -> ApiResult<Vec<UnboundedReceiver<Event>>> {
    let mut out = Vec::with_capacity(reqs.len());
    for r in reqs {
        out.push(model.engine.submit(r).map_err(crate::submit_error)?);
    }
    Ok(out)
}

pub struct Collected {
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<Option<TokenLogprob>>,
    pub finish: FinishReason,
    pub usage: Usage,
}

pub async fn collect(mut rx: UnboundedReceiver<Event>) -> ApiResult<Collected> {
    let mut c = Collected {
        ids: vec![],
        text: String::new(),
        logprobs: vec![],
        finish: FinishReason::Cancelled,
        usage: Usage::default(),
    };
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { id, text, logprob } => {
                c.ids.push(id);
                c.text.push_str(&text);
                c.logprobs.push(logprob);
            }
            Event::Done {
                text,
                finish_reason,
                usage,
            } => {
                c.text.push_str(&text);
                c.finish = finish_reason;
                c.usage = usage;
                return Ok(c);
            }
            Event::Error(e) => return Err(ApiError::internal(format!("generation failed: {e}"))),
        }
    }
    Err(ApiError::internal("generation ended without a result"))
}

/// OpenAI's name for why a choice ended.
pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length | FinishReason::Deadline => "length",
    }
}

/// Forwards every choice's events into one channel, tagged with the choice index.
pub fn merge(rxs: Vec<UnboundedReceiver<Event>>) -> mpsc::Receiver<(usize, Event)> {
    let (tx, rx) = mpsc::channel(256);
    for (i, mut r) in rxs.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = r.recv().await {
                let last = matches!(ev, Event::Done { .. } | Event::Error(_));
                if tx.send((i, ev)).await.is_err() || last {
                    break;
                }
            }
        });
    }
    rx
}

/// An SSE response: `on_event` turns each merged event (and `None` at the end) into `data:`
/// payloads; `[DONE]` closes the stream.
pub fn sse<F>(rx: mpsc::Receiver<(usize, Event)>, on_event: F) -> Response
where
    F: FnMut(Option<(usize, Event)>) -> Vec<String> + Send + 'static,
{
    struct St<F> {
        rx: mpsc::Receiver<(usize, Event)>,
        f: F,
        pending: VecDeque<String>,
        ended: bool,
    }
    let st = St {
        rx,
        f: on_event,
        pending: VecDeque::new(),
        ended: false,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(d) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(d)), st));
            }
            if st.ended {
                return None;
            }
            match st.rx.recv().await {
                Some(ev) => {
                    let out = (st.f)(Some(ev));
                    st.pending.extend(out);
                }
                None => {
                    let out = (st.f)(None);
                    st.pending.extend(out);
                    st.pending.push_back("[DONE]".to_string());
                    st.ended = true;
                }
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

/// A token's text and bytes for logprob listings.
pub fn token_text(model: &ServedModel, id: u32) -> String {
    model
        .engine
        .model
        .tokenizer
        .decode_lenient(&[id], false)
        .unwrap_or_default()
}
