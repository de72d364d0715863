//! Applies the guard to a whole request body: every string value (message contents and
//! content parts, tool definitions, tool-call arguments, completion prompts, stop strings…)
//! except a few structural fields is scanned, and later masked or pseudonymized in place.

use mideum_guard::{mask_value, Analyzer, Entity, GuardError, Vault};
use serde_json::Value;
use std::collections::BTreeMap;

/// Keys whose string values are protocol structure, not user text.
const STRUCTURAL: [&str; 5] = ["model", "role", "type", "tool_call_id", "id"];

fn walk<'a>(v: &'a Value, key: Option<&str>, f: &mut impl FnMut(&'a str)) {
    match v {
        Value::String(s) if !key.is_some_and(|k| STRUCTURAL.contains(&k)) => f(s),
        Value::Array(a) => a.iter().for_each(|x| walk(x, key, f)),
        Value::Object(o) => o.iter().for_each(|(k, x)| walk(x, Some(k), f)),
        _ => {}
    }
}

fn walk_mut<E>(
    v: &mut Value,
    key: Option<&str>,
    f: &mut impl FnMut(&mut String) -> Result<(), E>,
) -> Result<(), E> {
    match v {
        Value::String(s) if !key.is_some_and(|k| STRUCTURAL.contains(&k)) => f(s)?,
        Value::Array(a) => {
            for x in a {
                walk_mut(x, key, f)?
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                walk_mut(x, Some(k), f)?
            }
        }
        _ => {}
    }
    Ok(())
}

/// The entities found in each scanned string, in walk order.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    per_string: Vec<Vec<Entity>>,
    /// Entity type name -> count.
    pub findings: BTreeMap<&'static str, u32>,
}

/// Why the guard could not do its job; the request then fails closed off the premises.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("the personal-data guard failed: {0}")]
    Guard(#[from] GuardError),
    #[error("the personal-data guard failed unexpectedly")]
    Panicked,
}

impl Scan {
    pub fn run(analyzer: &Analyzer, body: &Value) -> Result<Scan, ScanError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut s = Scan::default();
            walk(body, None, &mut |t: &str| {
                let es = analyzer.analyze(t);
                for e in &es {
                    *s.findings.entry(e.kind.as_str()).or_insert(0) += 1;
                }
                s.per_string.push(es);
            });
            s
        }))
        .map_err(|_| ScanError::Panicked)
    }

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    /// A copy of `body` with each entity whose type has an action in `actions` masked or
    /// pseudonymized (placeholders recorded in `vault`).
    pub fn transform(
        &self,
        body: &Value,
        actions: &BTreeMap<String, crate::config::Action>,
        vault: &mut Vault,
    ) -> Result<Value, ScanError> {
        let mut out = body.clone();
        if actions.is_empty() {
            return Ok(out);
        }
        let mut i = 0;
        walk_mut(
            &mut out,
            None,
            &mut |s: &mut String| -> Result<(), ScanError> {
                let es = self.per_string.get(i).map(Vec::as_slice).unwrap_or(&[]);
                i += 1;
                if es.iter().any(|e| actions.contains_key(e.kind.as_str())) {
                    *s = apply(s, es, actions, vault)?;
                }
                Ok(())
            },
        )?;
        Ok(out)
    }
}

fn apply(
    text: &str,
    entities: &[Entity],
    actions: &BTreeMap<String, crate::config::Action>,
    vault: &mut Vault,
) -> Result<String, ScanError> {
    use crate::config::Action;
    let mut out = String::with_capacity(text.len() + 16);
    let mut pos = 0;
    for e in entities {
        let Some(&a) = actions.get(e.kind.as_str()) else {
            continue;
        };
        if e.byte_start < pos
            || e.byte_end > text.len()
            || !text.is_char_boundary(e.byte_start)
            || !text.is_char_boundary(e.byte_end)
        {
            return Err(GuardError::InvalidSpan {
                start: e.byte_start,
                end: e.byte_end,
            }
            .into());
        }
        let seg = &text[pos..e.byte_end];
        let gap = e.byte_start - pos;
        let gap_chars = text[pos..e.byte_start].chars().count();
        match a {
            Action::Pseudonymize => {
                let local = Entity {
                    start: gap_chars,
                    end: gap_chars + (e.end - e.start),
                    byte_start: gap,
                    byte_end: seg.len(),
                    ..e.clone()
                };
                out.push_str(&vault.pseudonymize(seg, &[local])?);
            }
            _ => {
                // Masking: the gap still goes through the vault so that text spelling an
                // issued placeholder is escaped.
                out.push_str(&vault.pseudonymize(&seg[..gap], &[])?);
                out.push_str(&mask_value(e.kind, &seg[gap..]));
            }
        }
        pos = e.byte_end;
    }
    out.push_str(&vault.pseudonymize(&text[pos..], &[])?);
    Ok(out)
}
