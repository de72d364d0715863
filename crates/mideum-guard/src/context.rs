//! Context words (Aho-Corasick) that raise or lower the confidence of a
//! candidate, looked up only in a small window around each candidate so that
//! the cost does not grow with the size of the text.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::error::GuardError;

/// A bit set of context categories.
pub type Cats = u32;

pub const RRN: Cats = 1 << 0;
pub const FRN: Cats = 1 << 1;
pub const CRN: Cats = 1 << 2;
pub const BRN: Cats = 1 << 3;
pub const PHONE: Cats = 1 << 4;
pub const CARD: Cats = 1 << 5;
pub const ACCOUNT: Cats = 1 << 6;
pub const PASSPORT: Cats = 1 << 7;
pub const LICENSE: Cats = 1 << 8;
pub const VEHICLE: Cats = 1 << 9;
pub const ADDRESS: Cats = 1 << 10;
/// Words that announce a non-personal number (order, invoice, product code...).
pub const NEG: Cats = 1 << 11;

const WORDS: &[(&str, Cats)] = &[
    ("주민등록번호", RRN),
    ("주민번호", RRN),
    ("주민등록", RRN),
    ("주민", RRN),
    ("생년월일", RRN),
    ("resident registration", RRN),
    ("rrn", RRN),
    ("외국인등록번호", FRN),
    ("외국인등록", FRN),
    ("외국인번호", FRN),
    ("외국인", FRN),
    ("거소", FRN),
    ("alien registration", FRN),
    ("법인등록번호", CRN),
    ("법인번호", CRN),
    ("법인등록", CRN),
    ("사업자등록번호", BRN),
    ("사업자번호", BRN),
    ("사업자", BRN),
    ("business registration", BRN),
    ("전화", PHONE),
    ("연락처", PHONE),
    ("연락", PHONE),
    ("휴대폰", PHONE),
    ("핸드폰", PHONE),
    ("휴대전화", PHONE),
    ("문의", PHONE),
    ("고객센터", PHONE),
    ("대표번호", PHONE),
    ("상담", PHONE),
    ("팩스", PHONE),
    ("tel", PHONE),
    ("phone", PHONE),
    ("mobile", PHONE),
    ("fax", PHONE),
    ("카드번호", CARD),
    ("카드", CARD),
    ("card", CARD),
    ("결제", CARD),
    ("은행", ACCOUNT),
    ("계좌", ACCOUNT),
    ("입금", ACCOUNT),
    ("송금", ACCOUNT),
    ("이체", ACCOUNT),
    ("예금주", ACCOUNT),
    ("출금", ACCOUNT),
    ("환불", ACCOUNT),
    ("뱅크", ACCOUNT),
    ("농협", ACCOUNT),
    ("신한", ACCOUNT),
    ("우체국", ACCOUNT),
    ("새마을금고", ACCOUNT),
    ("신협", ACCOUNT),
    ("수협", ACCOUNT),
    ("bank", ACCOUNT),
    ("account", ACCOUNT),
    ("여권", PASSPORT),
    ("passport", PASSPORT),
    ("면허", LICENSE),
    ("license", LICENSE),
    ("licence", LICENSE),
    ("차량", VEHICLE),
    ("번호판", VEHICLE),
    ("차번호", VEHICLE),
    ("주차", VEHICLE),
    ("주소", ADDRESS),
    ("거주지", ADDRESS),
    ("배송지", ADDRESS),
    ("소재지", ADDRESS),
    ("도로명", ADDRESS),
    ("주문번호", NEG),
    ("주문", NEG),
    ("송장", NEG),
    ("운송장", NEG),
    ("배송번호", NEG),
    ("상품코드", NEG),
    ("상품번호", NEG),
    ("모델", NEG),
    ("품번", NEG),
    ("우편번호", NEG),
    ("시리얼", NEG),
    ("일련번호", NEG),
    ("접수번호", NEG),
    ("예약번호", NEG),
    ("문서번호", NEG),
    ("관리번호", NEG),
    ("사건번호", NEG),
    ("승인번호", NEG),
    ("거래번호", NEG),
    ("영수증", NEG),
    ("인보이스", NEG),
    ("invoice", NEG),
    ("order", NEG),
    ("sku", NEG),
    ("tracking", NEG),
];

/// How far (bytes) before and after a candidate we look for context words.
/// 96 bytes is about 30 Hangul syllables: one form label plus punctuation.
const BEFORE: usize = 96;
const AFTER: usize = 48;

/// What the window around a candidate says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// Every category present in the window (same line only).
    pub any: Cats,
    /// Category of the context word closest before the candidate, if any.
    pub nearest_before: Cats,
}

impl Context {
    /// True when `cat` is present anywhere in the window.
    pub fn has(&self, cat: Cats) -> bool {
        self.any & cat != 0
    }
}

/// The compiled context dictionary.
pub struct ContextMatcher {
    ac: AhoCorasick,
}

impl ContextMatcher {
    pub fn new() -> Result<ContextMatcher, GuardError> {
        let ac = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(WORDS.iter().map(|(w, _)| *w))
            .map_err(|e| GuardError::Automaton(e.to_string()))?;
        Ok(ContextMatcher { ac })
    }

    /// Looks at the same line around `start..end` (byte offsets).
    pub fn around(&self, text: &str, start: usize, end: usize) -> Context {
        let b = text.as_bytes();
        let mut lo = start.saturating_sub(BEFORE);
        if let Some(nl) = memchr::memrchr(b'\n', &b[lo..start]) {
            lo += nl + 1;
        }
        let mut hi = (end + AFTER).min(b.len());
        if let Some(nl) = memchr::memchr(b'\n', &b[end..hi]) {
            hi = end + nl;
        }
        // Windows are cut on bytes; step to char boundaries so the slice is valid.
        while lo < start && !text.is_char_boundary(lo) {
            lo += 1;
        }
        while hi > end && !text.is_char_boundary(hi) {
            hi -= 1;
        }
        let mut ctx = Context::default();
        let mut best_before = usize::MAX;
        let input = aho_corasick::Input::new(text).span(lo..hi);
        for m in self.ac.find_iter(input) {
            let cat = WORDS[m.pattern().as_usize()].1;
            ctx.any |= cat;
            if m.end() <= start {
                let d = start - m.end();
                if d <= best_before {
                    best_before = d;
                    ctx.nearest_before = cat;
                }
            }
        }
        ctx
    }
}
