//! Korean personal names, found only in context: after a label
//! (`성명: 홍길동`, `예금주 김민수`) or before an honorific or title
//! (`김민수님`, `이영희 고객님`, `박지훈 과장`). Precision comes first: the
//! first syllable must be a common surname and common role words are refused.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::digits::Cand;
use crate::error::GuardError;
use crate::hangul::{char_at, char_before, is_syllable, syllables_after, syllables_before};
use crate::types::EntityType;

/// Labels after which a name follows. `true` marks strong labels that may be
/// followed by a two-syllable name.
const LABELS: &[(&str, bool)] = &[
    ("성명", true),
    ("이름", true),
    ("성함", true),
    ("고객명", true),
    ("예금주", true),
    ("환자명", true),
    ("담당자", false),
    ("신청인", false),
    ("신청자", false),
    ("수령인", false),
    ("수취인", false),
    ("받는분", false),
    ("받는 분", false),
    ("보호자", false),
    ("대표자", false),
    ("대표이사", false),
    ("작성자", false),
    ("가입자", false),
    ("계약자", false),
    ("피보험자", false),
    ("임차인", false),
    ("임대인", false),
    ("근로자", false),
    ("직원명", false),
    ("주문자", false),
    ("발신인", false),
    ("상담원", false),
];

/// Honorifics and titles that follow a name.
const SUFFIXES: &[&str] = &[
    "님",
    "씨",
    "고객님",
    "고객",
    "회원님",
    "과장",
    "대리",
    "부장",
    "차장",
    "팀장",
    "사원",
    "주임",
    "실장",
    "대표",
    "이사",
    "선생님",
    "교수",
    "환자",
    "매니저",
    "상담사",
    "책임",
    "선임",
    "수석",
    // Contract parties: "을: 홍길동 (주민등록번호 ...)".
    "(주민등록번호",
    "(주민번호",
    "(생년월일",
];

const SURNAMES: &str = "김이박최정강조윤장임한오서신권황안송전홍유고문양손배백허남심노하곽성차주우구민류나진지엄채원천방공현함변염여추도소석선설마길연위표명기반왕금옥육인맹제모탁국은편용예경봉부복태목형피두감음빈동온";
const COMPOUND_SURNAMES: &[&str] = &["남궁", "황보", "제갈", "선우", "독고", "사공", "서문"];

/// Words that look like surname + two syllables but are roles or nouns.
const BLOCK: &[&str] = &[
    "담당자",
    "신청자",
    "신청인",
    "변호사",
    "세무사",
    "회계사",
    "노무사",
    "법무사",
    "이사장",
    "조합장",
    "지점장",
    "위원장",
    "부원장",
    "사무장",
    "구매자",
    "가입자",
    "임차인",
    "임대인",
    "방문자",
    "전문가",
    "정비사",
    "고객님",
    "고객센",
    "주민등",
    "이용자",
    "보호자",
    "대표자",
    "수령인",
    "수취인",
    "작성자",
    "계약자",
    "근로자",
    "피보험",
    "상담원",
    "상담사",
    "관리자",
    "운영자",
    "사용자",
    "판매자",
    "배송지",
    "주소지",
    "연락처",
    "전화번",
    "휴대폰",
    "이메일",
    "홍보팀",
    "인사팀",
    "영업팀",
    "개발팀",
    "기획팀",
    "회원님",
    "선생님",
    "어머님",
    "아버님",
    "고객명",
    "성명란",
    "이름은",
    "성함은",
    "예금주",
    "문의자",
    "요청자",
    "민원인",
    "주문자",
    "한국인",
    "외국인",
    "대리인",
    "상속인",
    "공급자",
    "소유자",
    "동의자",
    "안내드",
    "확인부",
    "감사합",
    "부탁드",
    "최고급",
    "김치찌",
    "이번달",
    "이번주",
    "오늘은",
    "지난달",
    "다음달",
    "방금전",
    "전체적",
    "정상적",
    "기본적",
    "우선순",
    "최종적",
    "신규가",
    "신용카",
    "장기적",
];

const BLOCK2: &[&str] = &[
    "고객", "본인", "미상", "상동", "동일", "확인", "기재", "이하", "이상", "미기", "없음", "공란",
    "해당", "전체", "대표", "담당", "회원", "선생", "부모", "가족", "정보", "신청", "변경", "성명",
    "이름", "주소", "연락", "관리", "작성", "기입", "입력", "조회", "접수", "문의",
];

/// Endings that may be glued to a name after a label ("홍길동입니다").
const AFTER_NAME: &[&str] = &[
    "입니다",
    "이고",
    "이며",
    "이에요",
    "예요",
    "이요",
    "님",
    "씨",
    "은",
    "는",
    "이",
    "가",
    "의",
    "에게",
    "께서",
    "께",
    "과",
    "와",
    "으로",
    "로",
    "을",
    "를",
    "도",
    "고객",
    "회원",
];

pub struct PersonMatcher {
    ac: AhoCorasick,
    n_labels: usize,
}

fn surname_ok(first: char) -> bool {
    SURNAMES.contains(first)
}

/// Is `name` (2-4 syllables) acceptable as a personal name?
fn name_ok(name: &str, allow_two: bool) -> bool {
    let n = name.chars().count();
    let Some(first) = name.chars().next() else {
        return false;
    };
    match n {
        2 => allow_two && surname_ok(first) && !BLOCK2.contains(&name),
        3 => surname_ok(first) && !BLOCK.contains(&name) && !role_ending(name),
        4 => COMPOUND_SURNAMES.iter().any(|s| name.starts_with(s)),
        _ => false,
    }
}

/// Names rarely end in a syllable that usually marks a role (…사, …장).
fn role_ending(name: &str) -> bool {
    matches!(
        name.chars().next_back(),
        Some('사' | '장' | '님' | '들' | '쪽' | '분')
    )
}

impl PersonMatcher {
    pub fn new() -> Result<PersonMatcher, GuardError> {
        let pats: Vec<&str> = LABELS
            .iter()
            .map(|l| l.0)
            .chain(SUFFIXES.iter().copied())
            .collect();
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(AhoCorasickKind::DFA))
            .build(pats)
            .map_err(|e| GuardError::Automaton(e.to_string()))?;
        Ok(PersonMatcher {
            ac,
            n_labels: LABELS.len(),
        })
    }

    pub fn scan(&self, text: &str, out: &mut Vec<Cand>) {
        let mut last_end = 0;
        for m in self.ac.find_iter(text) {
            let id = m.pattern().as_usize();
            let found = if id < self.n_labels {
                after_label(text, m.end(), LABELS[id].1)
            } else {
                before_suffix(text, m.start(), SUFFIXES[id - self.n_labels])
            };
            if let Some((s, e)) = found {
                if s >= last_end {
                    let score = if id < self.n_labels { 0.85 } else { 0.8 };
                    out.push(Cand {
                        start: s,
                        end: e,
                        kind: EntityType::KrPerson,
                        score,
                    });
                    last_end = e;
                }
            }
        }
    }
}

fn after_label(text: &str, mut p: usize, strong: bool) -> Option<(usize, usize)> {
    // The label must be a word of its own ("성명", not "미성명").
    // Optional particle glued to the label: 이름은, 성함은, 예금주는.
    if let Some(c) = char_at(text, p) {
        if matches!(c, '은' | '는' | '이' | '가' | '란') {
            p += c.len_utf8();
        }
    }
    let b = text.as_bytes();
    let sep_start = p;
    while p < b.len()
        && p - sep_start < 4
        && matches!(b[p], b' ' | b':' | b'-' | b'|' | b'\t' | b'=')
    {
        p += 1;
    }
    let had_colon = text[sep_start..p].contains(':');
    if p == sep_start {
        return None;
    }
    let (e, n) = syllables_after(text, p, 8);
    if n == 0 {
        return None;
    }
    if n <= 4 {
        let name = &text[p..e];
        let allow_two = strong && had_colon;
        if name_ok(name, allow_two) {
            return Some((p, e));
        }
        return None;
    }
    // Longer run: a name followed by a particle or copula ("홍길동입니다").
    let len = if COMPOUND_SURNAMES.iter().any(|s| text[p..].starts_with(s)) {
        4
    } else {
        3
    };
    let name_end = nth_char_end(text, p, len)?;
    let rest = &text[name_end..e];
    if AFTER_NAME.iter().any(|a| rest.starts_with(a)) && name_ok(&text[p..name_end], false) {
        return Some((p, name_end));
    }
    None
}

fn nth_char_end(text: &str, p: usize, n: usize) -> Option<usize> {
    let mut e = p;
    for c in text.get(p..)?.chars().take(n) {
        e += c.len_utf8();
    }
    Some(e)
}

fn before_suffix(text: &str, q: usize, suffix: &str) -> Option<(usize, usize)> {
    let mut p = q;
    if let Some((' ', s)) = char_before(text, p) {
        p = s;
    } else if suffix == "이사" || suffix == "대표" || suffix == "고객" {
        // Glued titles are ambiguous ("홍보이사" is a job, not a name).
        return None;
    }
    let (s, n) = syllables_before(text, p, 5);
    if !(3..=4).contains(&n) {
        return None;
    }
    // After the suffix there may be particles, but not more of a word that
    // would make the suffix part of something else ("님" in "님비" is rare;
    // "씨" in "씨앗" is not).
    let after = q + suffix.len();
    if suffix == "씨" {
        if let Some(c) = char_at(text, after) {
            if is_syllable(c)
                && !matches!(
                    c,
                    '가' | '는' | '의' | '에' | '께' | '를' | '와' | '도' | '로' | '랑'
                )
            {
                return None;
            }
        }
    }
    let name = &text[s..p];
    if name_ok(name, false) {
        Some((s, p))
    } else {
        None
    }
}
