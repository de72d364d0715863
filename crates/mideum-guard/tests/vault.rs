//! Operators and the pseudonymization vault: masking conventions, keyed
//! hashing, restore in text, JSON and streams, and property tests for
//! identity, chunking independence and placeholder collisions.

use mideum_guard::{
    mask, redact, Analyzer, EntityType, GuardError, Hasher, RestoreMode, StreamRestorer, Vault,
};
use proptest::prelude::*;

fn analyzer() -> Analyzer {
    Analyzer::new().expect("analyzer builds")
}

#[test]
fn mask_follows_korean_convention() {
    let a = analyzer();
    let t =
        "주민등록번호 900101-1234568, 연락처 010-1234-5678, 성명: 홍길동, 카드 4111-1111-1111-1111";
    let m = mask(t, &a.analyze(t)).expect("mask");
    assert!(m.contains("900101-1******"), "{m}");
    assert!(m.contains("010-****-5678"), "{m}");
    assert!(m.contains("홍*동"), "{m}");
    assert!(m.contains("4111-****-****-1111"), "{m}");
    let r = redact(t, &a.analyze(t)).expect("redact");
    assert!(
        r.contains("[KR_RRN]") && r.contains("[KR_PHONE]") && !r.contains("5678"),
        "{r}"
    );
}

#[test]
fn keyed_hash_is_stable_per_key_and_ignores_separators() {
    let h1 = Hasher::new(b"tenant-a").expect("key");
    let h2 = Hasher::new(b"tenant-b").expect("key");
    let p = h1.pseudonym(EntityType::KrPhone, "010-1234-5678");
    assert_eq!(p, h1.pseudonym(EntityType::KrPhone, "01012345678"));
    assert_eq!(p, h1.pseudonym(EntityType::KrPhone, "+82-10-1234-5678"));
    assert_ne!(p, h2.pseudonym(EntityType::KrPhone, "010-1234-5678"));
    assert_ne!(p, h1.pseudonym(EntityType::KrPhone, "010-1234-5679"));
    assert!(p.starts_with("KR_PHONE_"));
    assert!(matches!(Hasher::new(b""), Err(GuardError::EmptyKey)));
}

#[test]
fn operators_reject_bad_spans() {
    let a = analyzer();
    let t = "전화 010-1234-5678";
    let mut es = a.analyze(t);
    es[0].byte_end = t.len() + 5;
    assert!(matches!(
        redact(t, &es),
        Err(GuardError::InvalidSpan { .. })
    ));
    let mut es = a.analyze(t);
    es[0].byte_start = 1; // inside the 3-byte '전'
    assert!(mask(t, &es).is_err());
}

#[test]
fn same_value_same_placeholder_distinct_values_distinct() {
    let a = analyzer();
    let mut v = Vault::new();
    let t = "010-1111-2222, 010-3333-4444, 다시 010-1111-2222";
    let p = v.pseudonymize(t, &a.analyze(t)).expect("pseudonymize");
    assert_eq!(p, "<KR_PHONE_1>, <KR_PHONE_2>, 다시 <KR_PHONE_1>");
    // A later turn reuses the mapping.
    let t2 = "010-3333-4444로 주세요";
    assert_eq!(
        v.pseudonymize(t2, &a.analyze(t2)).expect("p"),
        "<KR_PHONE_2>로 주세요"
    );
    assert_eq!(v.restore("<KR_PHONE_2>로 연락"), "010-3333-4444로 연락");
}

#[test]
fn placeholders_skip_text_already_in_the_input() {
    let a = analyzer();
    let mut v = Vault::new();
    let t = "문서에 <KR_PHONE_1> 라고 적혀 있고 실제 번호는 010-1234-5678";
    let p = v.pseudonymize(t, &a.analyze(t)).expect("p");
    assert!(p.starts_with("문서에 <KR_PHONE_1> 라고"), "{p}");
    assert!(p.ends_with("<KR_PHONE_2>"), "{p}");
    assert_eq!(v.restore(&p), t);
}

#[test]
fn restore_inside_json_tool_arguments() {
    let a = analyzer();
    let mut v = Vault::new();
    let t = "예금주: 홍길동, 메일 a\"b@example.com";
    let p = v.pseudonymize(t, &a.analyze(t)).expect("p");
    assert!(p.contains("<KR_PERSON_1>"), "{p}");
    let raw = r#"{"name": "<KR_PERSON_1>", "to": "\u003cKR_PERSON_1\u003e", "lit": "\\u003cKR_PERSON_1>"}"#;
    let out = v.restore_json(raw);
    assert_eq!(
        out,
        r#"{"name": "홍길동", "to": "홍길동", "lit": "\\u003cKR_PERSON_1>"}"#
    );
    // Values that need escaping are escaped.
    let mut v2 = Vault::new();
    let es = a.analyze("메일 b@example.com");
    let _ = v2.pseudonymize("메일 b@example.com", &es).expect("p");
    assert_eq!(v2.restore_json(r#""<EMAIL_1>""#), r#""b@example.com""#);
}

#[test]
fn stream_restorer_buffers_only_a_placeholder_prefix() {
    let a = analyzer();
    let mut v = Vault::new();
    let t = "전화 010-1234-5678";
    v.pseudonymize(t, &a.analyze(t)).expect("p");
    let mut s = StreamRestorer::new(&v, RestoreMode::Text);
    let mut out = s.push("번호는 <KR_PH");
    assert_eq!(out, "번호는 ");
    assert_eq!(s.pending_len(), "<KR_PH".len());
    out += &s.push("ONE_1>입니다 <b>");
    assert_eq!(s.pending_len(), 0);
    out += &s.finish();
    assert_eq!(out, "번호는 010-1234-5678입니다 <b>");
}

/// Restores `text` fed in the pieces given by `cuts` (byte offsets).
fn restore_chunked(v: &Vault, mode: RestoreMode, text: &str, cuts: &[usize]) -> String {
    let mut s = StreamRestorer::new(v, mode);
    let mut out = String::new();
    let mut prev = 0;
    for &c in cuts {
        out += &s.push(&text[prev..c]);
        prev = c;
    }
    out += &s.push(&text[prev..]);
    out + &s.finish()
}

fn vault_with_values() -> Vault {
    let a = analyzer();
    let mut v = Vault::new();
    let t = "성명: 홍길동, 010-1234-5678, kim@example.com, 900101-1234568";
    v.pseudonymize(t, &a.analyze(t)).expect("p");
    v
}

#[test]
fn every_chunking_of_a_short_stream_restores_the_same() {
    let v = vault_with_values();
    for (mode, text) in [
        (RestoreMode::Text, "a<KR_PHONE_1>b<EMAIL_1<KR_RRN_1>"),
        (
            RestoreMode::Json,
            "\\u003cKR_PHONE_1\\u003e\\\\u003cX<EMAIL_1\\u003E",
        ),
    ] {
        let whole = match mode {
            RestoreMode::Text => v.restore(text),
            RestoreMode::Json => v.restore_json(text),
        };
        let n = text.len();
        assert!(n <= 48);
        // Every 1-, 2- and 3-cut chunking (exhaustive for these sizes would be
        // 2^n; three cuts already cover every split of one placeholder).
        for i in 0..=n {
            for j in i..=n {
                for k in j..=n {
                    let cuts = [i, j, k];
                    assert_eq!(
                        restore_chunked(&v, mode, text, &cuts),
                        whole,
                        "cuts {cuts:?}"
                    );
                }
            }
        }
    }
}

fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("010-1234-5678".to_string()),
        Just("성명: 홍길동".to_string()),
        Just("kim@example.com".to_string()),
        Just("<KR_PHONE_1>".to_string()),
        Just("<KR_PHONE_2>".to_string()),
        Just("<LITERAL_1>".to_string()),
        Just("\\u003cKR_PHONE_1\\u003e".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("\\".to_string()),
        Just("주민번호 900101-1234568".to_string()),
        "[가-힣 ]{0,6}",
        "[0-9A-Z_<>\\-]{0,8}",
        any::<String>(),
    ]
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn pseudonymize_then_restore_is_identity(t1 in text_strategy(), t2 in text_strategy()) {
        let a = analyzer();
        let mut v = Vault::new();
        // Two turns: the second may contain placeholders issued in the first.
        for t in [&t1, &t2] {
            let es = a.analyze(t);
            let p = v.pseudonymize(t, &es).expect("valid spans");
            prop_assert_eq!(&v.restore(&p), t);
        }
    }

    #[test]
    fn no_placeholder_collides_with_the_input(t in text_strategy()) {
        let a = analyzer();
        let mut v = Vault::new();
        let es = a.analyze(&t);
        let p = v.pseudonymize(&t, &es).expect("valid spans");
        // The vault is fresh, so every placeholder it holds was issued for
        // this input, and none of them may already occur in it.
        for ph in v.placeholders() {
            prop_assert!(!t.contains(ph), "placeholder {} occurs in input", ph);
            prop_assert!(p.contains(ph), "issued placeholder {} unused", ph);
        }
    }

    #[test]
    fn any_chunking_restores_the_same(
        t in text_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        json in any::<bool>(),
    ) {
        let v = vault_with_values();
        let mode = if json { RestoreMode::Json } else { RestoreMode::Text };
        let whole = if json { v.restore_json(&t) } else { v.restore(&t) };
        let mut offs: Vec<usize> = cuts
            .iter()
            .map(|ix| ix.index(t.len() + 1))
            .map(|mut o| { while !t.is_char_boundary(o) { o -= 1; } o })
            .collect();
        offs.sort_unstable();
        prop_assert_eq!(restore_chunked(&v, mode, &t, &offs), whole);
    }
}
