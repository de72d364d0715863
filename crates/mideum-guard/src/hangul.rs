//! Small helpers to step over Hangul syllables and classify the characters
//! that surround a candidate (particles, units, region names).

/// True for a precomposed Hangul syllable (가..힣).
pub fn is_syllable(c: char) -> bool {
    ('\u{AC00}'..='\u{D7A3}').contains(&c)
}

/// The character that ends at byte `pos`, with its start offset.
pub fn char_before(text: &str, pos: usize) -> Option<(char, usize)> {
    let c = text.get(..pos)?.chars().next_back()?;
    Some((c, pos - c.len_utf8()))
}

/// The character that starts at byte `pos`.
pub fn char_at(text: &str, pos: usize) -> Option<char> {
    text.get(pos..)?.chars().next()
}

/// Start of the run of Hangul syllables that ends at `pos`, scanning back at
/// most `max` syllables (the bound keeps pathological inputs linear). Returns
/// `(start, count)`; `count > max` means the run is longer than `max`.
pub fn syllables_before(text: &str, pos: usize, max: usize) -> (usize, usize) {
    let mut start = pos;
    let mut n = 0;
    while let Some((c, s)) = char_before(text, start) {
        if !is_syllable(c) {
            break;
        }
        n += 1;
        start = s;
        if n > max {
            break;
        }
    }
    (start, n)
}

/// End of the run of Hangul syllables that starts at `pos`, at most `max + 1`
/// syllables. Returns `(end, count)`.
pub fn syllables_after(text: &str, pos: usize, max: usize) -> (usize, usize) {
    let mut end = pos;
    let mut n = 0;
    if let Some(rest) = text.get(pos..) {
        for c in rest.chars() {
            if !is_syllable(c) {
                break;
            }
            n += 1;
            end += c.len_utf8();
            if n > max {
                break;
            }
        }
    }
    (end, n)
}

/// Syllables that follow a number when it is a quantity, a date part or a
/// money amount rather than an identifier ("2000원", "12조", "3대").
pub fn is_unit(c: char) -> bool {
    matches!(
        c,
        '년' | '원'
            | '명'
            | '개'
            | '건'
            | '회'
            | '세'
            | '살'
            | '시'
            | '분'
            | '초'
            | '일'
            | '월'
            | '만'
            | '억'
            | '천'
            | '배'
            | '위'
            | '평'
            | '차'
            | '박'
            | '장'
            | '권'
            | '병'
            | '잔'
            | '대'
            | '곳'
            | '점'
            | '%'
    )
}

/// 시/도 names, long and short forms, used by addresses, old licence numbers
/// and old vehicle plates.
pub const SIDO: &[&str] = &[
    "서울특별시",
    "서울시",
    "서울",
    "부산광역시",
    "부산시",
    "부산",
    "대구광역시",
    "대구시",
    "대구",
    "인천광역시",
    "인천시",
    "인천",
    "광주광역시",
    "광주시",
    "광주",
    "대전광역시",
    "대전시",
    "대전",
    "울산광역시",
    "울산시",
    "울산",
    "세종특별자치시",
    "세종시",
    "세종",
    "경기도",
    "경기",
    "강원특별자치도",
    "강원도",
    "강원",
    "충청북도",
    "충북",
    "충청남도",
    "충남",
    "전북특별자치도",
    "전라북도",
    "전북",
    "전라남도",
    "전남",
    "경상북도",
    "경북",
    "경상남도",
    "경남",
    "제주특별자치도",
    "제주도",
    "제주",
];

/// Short region names (old licence numbers, old plates).
pub const REGIONS: &[&str] = &[
    "서울", "부산", "경기", "강원", "충북", "충남", "전북", "전남", "경북", "경남", "제주", "대구",
    "인천", "광주", "대전", "울산",
];

/// True when `s` is a 시/도 name.
pub fn is_sido(s: &str) -> bool {
    SIDO.contains(&s)
}

/// If the text before `pos` ends with a short region name (optionally followed
/// by one space or hyphen), returns where that name starts.
pub fn region_before(text: &str, pos: usize, allow_sep: bool) -> Option<usize> {
    let mut p = pos;
    if allow_sep {
        if let Some((c, s)) = char_before(text, p) {
            if c == ' ' || c == '-' {
                p = s;
            }
        }
    }
    let head = text.get(..p)?;
    for r in REGIONS {
        if head.ends_with(r) {
            let s = p - r.len();
            // The region must be a word of its own, not the tail of a longer word.
            match char_before(text, s) {
                Some((c, _)) if is_syllable(c) || c.is_ascii_alphanumeric() => continue,
                _ => return Some(s),
            }
        }
    }
    None
}
