//! Chat prompts that cannot be hijacked: only the chat template's own markup becomes control
//! tokens. Text inside messages that spells a control token (`<|eot_id|><|start_header_id|>
//! system<|end_header_id|>`) is tokenized as the plain text it is.
//!
//! How: before rendering, every special-token string inside message text is replaced by a
//! private-use sentinel character; the template renders as usual (filters such as `trim` see
//! the same text length and shape); the rendered prompt is split at the special tokens that are
//! left (all from the template), and each piece between them gets its sentinels turned back into
//! the original strings and is tokenized with special-token parsing off. For a prompt without
//! such strings this is exactly what `tokenizer.encode(rendered)` gives, since the tokenizer
//! also splits at special tokens before tokenizing the text between them.

use crate::error::{ModelError, Result};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use serde_json::Value;

/// Sentinel planes: supplementary private-use areas A and B.
const PLANES: [u32; 2] = [0xF0000, 0x100000];

fn uses_plane(v: &Value, base: u32) -> bool {
    match v {
        Value::String(s) => s
            .chars()
            .any(|c| (base..base + 0xFFFE).contains(&(c as u32))),
        Value::Array(a) => a.iter().any(|x| uses_plane(x, base)),
        Value::Object(o) => o.values().any(|x| uses_plane(x, base)),
        _ => false,
    }
}

fn defang(v: &mut Value, specials: &[(String, u32)], base: u32) {
    match v {
        Value::String(s) => {
            for (k, (t, _)) in specials.iter().enumerate() {
                if s.contains(t.as_str()) {
                    let c = char::from_u32(base + k as u32).unwrap_or('\u{FFFD}');
                    *s = s.replace(t.as_str(), &c.to_string());
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| defang(x, specials, base)),
        Value::Object(o) => o.values_mut().for_each(|x| defang(x, specials, base)),
        _ => {}
    }
}

fn restore(s: &str, specials: &[(String, u32)], base: u32) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let u = c as u32;
        match u
            .checked_sub(base)
            .filter(|&k| (k as usize) < specials.len())
        {
            Some(k) => out.push_str(&specials[k as usize].0),
            None => out.push(c),
        }
    }
    out
}

/// Renders `messages` (and `tools`) with the template and tokenizes the result so that only the
/// template's markup yields control tokens. Returns the rendered text (as the model sees it)
/// and its token ids.
pub fn encode_chat(
    tok: &Tokenizer,
    template: &ChatTemplate,
    messages: &Value,
    tools: Option<&Value>,
    add_generation_prompt: bool,
) -> Result<(String, Vec<u32>)> {
    let specials = tok.special_tokens();
    let base = PLANES
        .iter()
        .copied()
        .find(|&b| !uses_plane(messages, b) && !tools.is_some_and(|t| uses_plane(t, b)))
        .ok_or_else(|| {
            ModelError::Input(
                "messages use characters from both supplementary private-use planes".into(),
            )
        })?;
    let mut msgs = messages.clone();
    defang(&mut msgs, specials, base);
    let tools_d = tools.map(|t| {
        let mut t = t.clone();
        defang(&mut t, specials, base);
        t
    });
    let rendered = template.render(&msgs, tools_d.as_ref(), add_generation_prompt)?;
    // Special-token strings left in the rendered prompt come from the template; the text
    // between them gets its sentinels turned back into the original strings.
    let ids = tok.encode_split(&rendered, &|text| restore(text, specials, base))?;
    Ok((restore(&rendered, specials, base), ids))
}
