//! The analyzer: runs every detector over one normalised copy of the text,
//! drops low-confidence candidates, resolves overlaps and reports offsets in
//! the caller's text (bytes and Unicode characters).

use crate::ascii;
use crate::context::ContextMatcher;
use crate::digits::{self, Cand};
use crate::error::GuardError;
use crate::normalize::Normalized;
use crate::person::PersonMatcher;
use crate::types::{Entity, EntityType};

/// Default confidence below which candidates are dropped. Shapes that need
/// context (bank accounts, passports, bare 13-digit runs) score below it
/// when the context is missing.
pub const DEFAULT_MIN_SCORE: f32 = 0.5;

/// Compiled detectors. Build once and share: analysis takes `&self`.
pub struct Analyzer {
    ctx: ContextMatcher,
    person: PersonMatcher,
    min_score: f32,
    enabled: Vec<EntityType>,
}

impl Analyzer {
    /// Builds the analyzer with every entity type enabled.
    pub fn new() -> Result<Analyzer, GuardError> {
        Ok(Analyzer {
            ctx: ContextMatcher::new()?,
            person: PersonMatcher::new()?,
            min_score: DEFAULT_MIN_SCORE,
            enabled: EntityType::ALL.to_vec(),
        })
    }

    /// Changes the confidence threshold (0..=1).
    pub fn with_min_score(mut self, min_score: f32) -> Analyzer {
        self.min_score = min_score;
        self
    }

    /// Restricts detection to the given types.
    pub fn with_types(mut self, types: &[EntityType]) -> Analyzer {
        self.enabled = types.to_vec();
        self
    }

    /// Finds personal data in `text`. Entities come back sorted and
    /// non-overlapping, so they can be handed to any operator as they are.
    pub fn analyze(&self, text: &str) -> Vec<Entity> {
        let norm = Normalized::new(text);
        let t: &str = &norm.text;
        let mut cands: Vec<Cand> = Vec::new();
        digits::scan(t, &self.ctx, &mut cands);
        ascii::emails(t, &mut cands);
        ascii::ipv6(t, &mut cands);
        if self.enabled.contains(&EntityType::KrPerson) {
            self.person.scan(t, &mut cands);
        }
        cands.retain(|c| c.score >= self.min_score && self.enabled.contains(&c.kind));
        let kept = resolve_overlaps(cands);
        to_entities(text, &norm, &kept)
    }
}

/// Keeps, among overlapping candidates, the longest (then the most confident).
fn resolve_overlaps(mut cands: Vec<Cand>) -> Vec<Cand> {
    cands.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut kept: Vec<Cand> = Vec::with_capacity(cands.len());
    let better = |a: &Cand, b: &Cand| {
        let (la, lb) = (a.end - a.start, b.end - b.start);
        la > lb || (la == lb && a.score > b.score)
    };
    for c in cands {
        match kept.last_mut() {
            Some(last) if c.start < last.end => {
                if better(&c, last) {
                    *last = c;
                    while kept.len() >= 2 && kept[kept.len() - 2].end > kept[kept.len() - 1].start {
                        let n = kept.len();
                        if better(&kept[n - 1], &kept[n - 2]) {
                            kept.remove(n - 2);
                        } else {
                            kept.pop();
                        }
                    }
                }
            }
            _ => kept.push(c),
        }
    }
    kept
}

fn count_chars(b: &[u8]) -> usize {
    b.iter().filter(|&&x| (x & 0xC0) != 0x80).count()
}

fn to_entities(text: &str, norm: &Normalized, kept: &[Cand]) -> Vec<Entity> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(kept.len());
    let (mut byte_pos, mut char_pos) = (0usize, 0usize);
    for c in kept {
        let bs = norm.to_original(c.start);
        let be = norm.to_original(c.end);
        if bs < byte_pos || be < bs || be > b.len() {
            continue;
        }
        char_pos += count_chars(&b[byte_pos..bs]);
        let start = char_pos;
        char_pos += count_chars(&b[bs..be]);
        byte_pos = be;
        out.push(Entity {
            kind: c.kind,
            start,
            end: char_pos,
            byte_start: bs,
            byte_end: be,
            score: c.score,
        });
    }
    out
}
