//! Detector behaviour on hand-written cases: formats, robustness to how
//! people type, hard negatives, offsets and pathological inputs.

use mideum_guard::{Analyzer, EntityType};

fn found(text: &str) -> Vec<(EntityType, String)> {
    let a = Analyzer::new().expect("analyzer builds");
    a.analyze(text)
        .into_iter()
        .map(|e| (e.kind, text[e.byte_start..e.byte_end].to_string()))
        .collect()
}

fn has(text: &str, kind: EntityType, value: &str) {
    let f = found(text);
    assert!(
        f.iter().any(|(k, v)| *k == kind && v == value),
        "expected {kind} {value:?} in {text:?}, got {f:?}"
    );
}

fn none_of(text: &str, kind: EntityType) {
    let f = found(text);
    assert!(
        !f.iter().any(|(k, _)| *k == kind),
        "expected no {kind} in {text:?}, got {f:?}"
    );
}

use EntityType::*;

#[test]
fn rrn_valid_checksum_and_date() {
    has("주민등록번호: 900101-1234568", KrRrn, "900101-1234568");
    has("주민번호는 9001011234568입니다", KrRrn, "9001011234568");
    // Invalid month.
    none_of("번호 901301-1234568 입니다", KrRrn);
    // Inside a longer digit run.
    none_of("거래번호 20249001011234568", KrRrn);
    none_of("코드 19001011234568", KrRrn);
}

#[test]
fn rrn_issued_after_2020_without_checksum() {
    // Bad check digit, valid date: still an RRN, with or without context.
    has("주민등록번호 210315-4827391", KrRrn, "210315-4827391");
    has("210315-4827391", KrRrn, "210315-4827391");
}

#[test]
fn frn_by_century_digit() {
    // 850315-5 + checksum-valid tail.
    let d = "850315512345";
    let w = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5];
    let sum: u32 = d.bytes().zip(w).map(|(b, w)| (b - b'0') as u32 * w).sum();
    let ck = (11 - sum % 11) % 10;
    let frn = format!("850315-5{}{}", &d[7..], ck);
    has(&format!("외국인등록번호 {frn}"), KrFrn, &frn);
}

#[test]
fn phones_in_every_shape() {
    has(
        "연락처 010-1234-5678로 연락주세요",
        KrPhone,
        "010-1234-5678",
    );
    has("01012345678", KrPhone, "01012345678");
    has("010 1234 5678", KrPhone, "010 1234 5678");
    has("010.1234.5678", KrPhone, "010.1234.5678");
    has(
        "전화 ０１０－１２３４－５６７８ 입니다",
        KrPhone,
        "０１０－１２３４－５６７８",
    );
    has("대표번호 02-123-4567", KrPhone, "02-123-4567");
    has("(02) 1234-5678", KrPhone, "(02) 1234-5678");
    has("고객센터 1588-1234", KrPhone, "1588-1234");
    has("+82-10-1234-5678", KrPhone, "+82-10-1234-5678");
    has("+82 2 1234 5678", KrPhone, "+82 2 1234 5678");
    has("0505-123-4567", KrPhone, "0505-123-4567");
    has("070-1234-5678", KrPhone, "070-1234-5678");
    has("031-987-6543", KrPhone, "031-987-6543");
    none_of("010-1234-567", KrPhone);
    none_of("주문번호 99010-1234-5678", KrPhone);
    none_of("0101234567899", KrPhone);
}

#[test]
fn cards_need_luhn() {
    has(
        "카드번호 4111-1111-1111-1111",
        CreditCard,
        "4111-1111-1111-1111",
    );
    has("4111 1111 1111 1111", CreditCard, "4111 1111 1111 1111");
    none_of("카드번호 4111-1111-1111-1112", CreditCard);
}

#[test]
fn business_and_corporate_numbers() {
    has("사업자등록번호 220-81-62517", KrBrn, "220-81-62517");
    none_of("사업자등록번호 220-81-62518", KrBrn);
    // 110111-0000003: CRN checksum (1,2 weights) = ... computed below.
    let base = "110111000000";
    let sum: u32 = base
        .bytes()
        .enumerate()
        .map(|(i, b)| (b - b'0') as u32 * if i % 2 == 0 { 1 } else { 2 })
        .sum();
    let crn = format!("110111-{}{}", &base[6..], (10 - sum % 10) % 10);
    has(&format!("법인등록번호: {crn}"), KrCrn, &crn);
}

#[test]
fn email_ip_and_glued_particles() {
    has(
        "메일은 hong.gildong@example.co.kr으로 보내주세요",
        Email,
        "hong.gildong@example.co.kr",
    );
    has("접속 IP 192.168.0.15에서", IpAddress, "192.168.0.15");
    has(
        "서버 2001:db8::8a2e:370:7334 로그",
        IpAddress,
        "2001:db8::8a2e:370:7334",
    );
    none_of("버전 1.2.3 에서", IpAddress);
    none_of("시각 10:30:45", IpAddress);
    none_of("IP 256.1.1.1", IpAddress);
}

#[test]
fn passport_license_plate() {
    has("여권번호 M123A4567", KrPassport, "M123A4567");
    has("여권 번호: M12345678", KrPassport, "M12345678");
    none_of("모델 M12345678", KrPassport);
    has(
        "운전면허번호 11-12-123456-78",
        KrDriverLicense,
        "11-12-123456-78",
    );
    has(
        "면허 서울-91-123456-12",
        KrDriverLicense,
        "서울-91-123456-12",
    );
    none_of("번호 31-12-123456-78", KrDriverLicense);
    has("차량번호 12가3456 입니다", KrVehiclePlate, "12가3456");
    has("123가4567이 주차", KrVehiclePlate, "123가4567");
    has("서울12가3456", KrVehiclePlate, "서울12가3456");
    none_of("매출 12조 3456억 원", KrVehiclePlate);
}

#[test]
fn bank_account_needs_context() {
    has(
        "입금 계좌 신한은행 110-123-456789",
        KrBankAccount,
        "110-123-456789",
    );
    none_of("문서 110-123-456789", KrBankAccount);
    none_of("주문번호 110-123-456789 입금 확인", KrBankAccount);
}

#[test]
fn addresses() {
    has(
        "주소: 서울특별시 강남구 테헤란로 123, 5층",
        KrAddress,
        "서울특별시 강남구 테헤란로 123",
    );
    has(
        "경기도 성남시 분당구 판교역로146번길 20에 있습니다",
        KrAddress,
        "경기도 성남시 분당구 판교역로146번길 20",
    );
    has(
        "경기도 수원시 팔달구 인계동 1234-5번지",
        KrAddress,
        "경기도 수원시 팔달구 인계동 1234-5번지",
    );
    none_of("연구 개발로 2024년 성과", KrAddress);
}

#[test]
fn names_in_context() {
    has("성명: 홍길동", KrPerson, "홍길동");
    has("김민수님 안녕하세요", KrPerson, "김민수");
    has("이영희 고객님의 요청", KrPerson, "이영희");
    has("담당 박지훈 과장", KrPerson, "박지훈");
    none_of("고객님 안녕하세요", KrPerson);
    none_of("변호사님께 문의", KrPerson);
    none_of("선생님 감사합니다", KrPerson);
}

#[test]
fn char_offsets_are_python_indices() {
    let a = Analyzer::new().expect("analyzer");
    let text = "연락처는 010-1234-5678입니다";
    let e = &a.analyze(text)[0];
    assert_eq!((e.start, e.end), (5, 18));
    let chars: Vec<char> = text.chars().collect();
    let v: String = chars[e.start..e.end].iter().collect();
    assert_eq!(v, "010-1234-5678");
    // Full-width digits: offsets refer to the caller's text, not the folded copy.
    let text = "전화 ０１０－１２３４－５６７８";
    let e = &a.analyze(text)[0];
    assert_eq!((e.start, e.end), (3, 16));
    assert_eq!(
        &text[e.byte_start..e.byte_end],
        "０１０－１２３４－５６７８"
    );
}

#[test]
fn pathological_inputs_finish() {
    let a = Analyzer::new().expect("analyzer");
    let long_digits = "1".repeat(5_000_000);
    assert!(a.analyze(&long_digits).is_empty());
    let dashes = "1-".repeat(1_000_000);
    assert!(a.analyze(&dashes).is_empty());
    let ats = "a@".repeat(1_000_000);
    assert!(a.analyze(&ats).is_empty());
    let colons = "1:".repeat(1_000_000);
    assert!(a.analyze(&colons).is_empty());
    let near = "010-1234-567 ".repeat(200_000);
    assert!(a.analyze(&near).is_empty());
    let names = "김님 ".repeat(500_000);
    assert!(a.analyze(&names).is_empty());
    let lt = "<".repeat(1_000_000);
    assert!(a.analyze(&lt).is_empty());
}

#[test]
fn hundred_megabyte_input_is_scanned_completely() {
    let a = Analyzer::new().expect("analyzer");
    let unit = "고객 김민수님 연락처 010-1234-5678, 주문번호 ORD-20240115-000123, 금액 35,000원.\n\
                이번 분기 매출은 전년 대비 증가했으며 신규 고객 확보가 주된 원인입니다.\n";
    let per_unit = a.analyze(unit).len();
    assert_eq!(per_unit, 2);
    let n = 100_000_000 / unit.len() + 1;
    let big = unit.repeat(n);
    assert!(big.len() >= 100_000_000);
    let found = a.analyze(&big);
    assert_eq!(found.len(), per_unit * n);
    // Offsets of the last entity are still exact at the end of the text.
    let last = &found[found.len() - 1];
    assert_eq!(&big[last.byte_start..last.byte_end], "010-1234-5678");
}

#[test]
fn lossily_decoded_input_is_scanned() {
    let a = Analyzer::new().expect("analyzer");
    let raw = b"\xff\xfe\xc0 \xed\xa0\x80 010-1234-5678";
    let text = String::from_utf8_lossy(raw);
    let f = a.analyze(&text);
    assert_eq!(f.len(), 1);
    assert_eq!(&text[f[0].byte_start..f[0].byte_end], "010-1234-5678");
}
