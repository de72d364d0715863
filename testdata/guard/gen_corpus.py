#!/usr/bin/env python3
"""Generates the labeled Korean PII test corpus for mideum-guard.

Writes corpus.jsonl next to this script: one JSON object per line with
  id, category, text, entities: [{type, start, end}]
where start/end are Python string (code point) indices. Values are synthetic:
identifiers that carry a checksum are generated with a valid one, and hard
negatives (dates, order numbers, amounts, codes, postal codes, invalid dates,
failed checksums, identifiers embedded in longer digit runs) are unlabeled.

Deterministic: a fixed seed, so the committed corpus can be regenerated.
    python3 testdata/guard/gen_corpus.py
"""
import json
import os
import random
import re

SEED = 20240505
N_TEXTS = 640
R = random.Random(SEED)

# ---------------------------------------------------------------- values

def digits(n):
    return "".join(str(R.randint(0, 9)) for _ in range(n))

def rrn_check(d12):
    w = [2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5]
    s = sum(int(a) * b for a, b in zip(d12, w))
    return str((11 - s % 11) % 10)

def crn_check(d12):
    s = sum(int(a) * (1 if i % 2 == 0 else 2) for i, a in enumerate(d12))
    return str((10 - s % 10) % 10)

def brn_check(d9):
    w = [1, 3, 7, 1, 3, 7, 1, 3, 5]
    s = sum(int(a) * b for a, b in zip(d9, w)) + (int(d9[8]) * 5) // 10
    return str((10 - s % 10) % 10)

def luhn_complete(prefix, length):
    body = prefix + digits(length - len(prefix) - 1)
    for c in "0123456789":
        cand = body + c
        total = 0
        for i, ch in enumerate(reversed(cand)):
            v = int(ch)
            if i % 2 == 1:
                v *= 2
                if v > 9:
                    v -= 9
            total += v
        if total % 10 == 0:
            return cand
    raise AssertionError

def luhn_ok(s):
    total = 0
    for i, ch in enumerate(reversed(s)):
        v = int(ch)
        if i % 2 == 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0

DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

def birth(century_digit):
    base = {1: 1900, 2: 1900, 3: 2000, 4: 2000, 5: 1900, 6: 1900, 7: 2000, 8: 2000}[century_digit]
    yy = R.randint(0, 99) if base == 1900 else R.randint(0, 19)
    m = R.randint(1, 12)
    d = R.randint(1, DAYS[m - 1])
    return f"{yy:02d}{m:02d}{d:02d}"

def fullwidth(s):
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s)

def fmt13(d13, allow_nosep=True):
    r = R.random()
    if r < 0.8 or not allow_nosep:
        return d13[:6] + "-" + d13[6:]
    if r < 0.88:
        return d13[:6] + " " + d13[6:]
    if r < 0.94:
        return fullwidth(d13[:6] + "-" + d13[6:])
    return d13

def rrn():
    if R.random() < 0.2:
        # Issued since 2020-10-05: random digits after G, no valid check digit.
        m = R.randint(1, 12)
        d = R.randint(1, DAYS[m - 1])
        yy = R.randint(21, 24)
        g = R.choice("34")
        d12 = f"{yy:02d}{m:02d}{d:02d}{g}" + digits(5)
        tail = str((int(rrn_check(d12)) + R.randint(1, 9)) % 10)
        return fmt13(d12 + tail, allow_nosep=False)
    g = R.choice([1, 2, 1, 2, 3, 4])
    d12 = birth(g) + str(g) + digits(5)
    return fmt13(d12 + rrn_check(d12))

def frn():
    g = R.choice([5, 6, 7, 8])
    d12 = birth(g) + str(g) + digits(5)
    return fmt13(d12 + rrn_check(d12))

CRN_OFFICES = ["1101", "1201", "1301", "1311", "1345", "1358", "1401", "1501", "1611", "1701", "1801", "2001", "2301", "2401", "1746", "1147"]
CRN_TYPES = ["11", "11", "11", "12", "71", "81", "31", "21"]

def crn():
    d12 = R.choice(CRN_OFFICES) + R.choice(CRN_TYPES) + digits(6)
    d = d12 + crn_check(d12)
    return d[:6] + "-" + d[6:]

def brn():
    d9 = str(R.randint(101, 899)) + R.choice(["81", "86", "87", "88", "01", "05", "13", "24", "37"]) + digits(4)
    d = d9 + brn_check(d9)
    r = R.random()
    if r < 0.85:
        return f"{d[:3]}-{d[3:5]}-{d[5:]}"
    if r < 0.93:
        return fullwidth(f"{d[:3]}-{d[3:5]}-{d[5:]}")
    return f"{d[:3]} {d[3:5]} {d[5:]}"

AREAS = ["02", "031", "032", "033", "041", "042", "043", "044", "051", "052", "053", "054", "055", "061", "062", "063", "064"]

def phone():
    r = R.random()
    if r < 0.55:
        mid, last = digits(4), digits(4)
        style = R.random()
        if style < 0.6:
            return f"010-{mid}-{last}"
        if style < 0.72:
            return f"010{mid}{last}"
        if style < 0.8:
            return f"010 {mid} {last}"
        if style < 0.86:
            return f"010.{mid}.{last}"
        if style < 0.93:
            return fullwidth(f"010-{mid}-{last}")
        return R.choice([f"+82-10-{mid}-{last}", f"+82 10 {mid} {last}", f"+8210{mid}{last}"])
    if r < 0.8:
        a = R.choice(AREAS)
        mid = str(R.randint(2, 9)) + digits(R.choice([2, 3]))
        last = digits(4)
        if R.random() < 0.15 and a == "02":
            return f"(02) {mid}-{last}"
        return f"{a}-{mid}-{last}"
    if r < 0.88:
        return f"070-{digits(4)}-{digits(4)}"
    if r < 0.92:
        return f"050{R.randint(2, 8)}-{digits(3)}-{digits(4)}"
    if r < 0.95:
        return f"01{R.choice('16789')}-{R.randint(2, 9)}{digits(2)}-{digits(4)}"
    return f"{R.choice(['15', '16', '18'])}{R.randint(0, 9)}{R.randint(0, 9)}-{digits(4)}"

def card():
    kind = R.random()
    if kind < 0.15:
        n = luhn_complete(R.choice(["34", "37"]), 15)
        return f"{n[:4]}-{n[4:10]}-{n[10:]}"
    prefix = R.choice(["4", "4", "51", "52", "53", "54", "55", "9410", "9420", "9490", "6250"])
    n = luhn_complete(prefix, 16)
    style = R.random()
    if style < 0.6:
        return "-".join(n[i:i + 4] for i in range(0, 16, 4))
    if style < 0.85:
        return " ".join(n[i:i + 4] for i in range(0, 16, 4))
    return n

BANKS = [
    ("신한은행", lambda: f"110-{digits(3)}-{digits(6)}"),
    ("국민은행", lambda: f"{digits(6)}-{digits(2)}-{digits(6)}"),
    ("KB국민은행", lambda: f"{digits(6)}-{digits(2)}-{digits(6)}"),
    ("우리은행", lambda: f"1002-{digits(3)}-{digits(6)}"),
    ("하나은행", lambda: f"{digits(3)}-{digits(6)}-{digits(5)}"),
    ("농협", lambda: f"3{digits(2)}-{digits(4)}-{digits(4)}-{digits(2)}"),
    ("NH농협은행", lambda: f"{R.choice(['301', '302', '351', '352'])}-{digits(4)}-{digits(4)}-{digits(2)}"),
    ("카카오뱅크", lambda: f"3333-{digits(2)}-{digits(7)}"),
    ("기업은행", lambda: f"{digits(3)}-{digits(6)}-{digits(2)}-{digits(3)}"),
    ("토스뱅크", lambda: f"1000-{digits(4)}-{digits(4)}"),
    ("우체국", lambda: f"{digits(6)}-{digits(2)}-{digits(6)}"),
    ("새마을금고", lambda: f"9002-{digits(4)}-{digits(4)}-{digits(1)}"),
]

def bank():
    name, f = R.choice(BANKS)
    while True:
        acct = f()
        d = acct.replace("-", "")
        # Keep the synthetic value unambiguous: no phone, date or card reading.
        if d.startswith("01") or re.match(r"(19|20)\d{6}", d):
            continue
        if len(d) >= 13 and luhn_ok(d):
            continue
        return name, acct

FIRST = ["minsu", "jihoon", "seoyeon", "hyunwoo", "jiwon", "yuna", "dohyun", "sujin", "kim.j", "lee_h", "park88", "choi.sy", "jung-ho", "hana", "yoon2", "kang.m", "support", "hr.team", "gildong.hong"]
DOMAINS = ["naver.com", "gmail.com", "daum.net", "hanmail.net", "kakao.com", "nate.com", "samsung.com", "company.co.kr", "example.or.kr", "mideum.ai", "korea.kr", "snu.ac.kr"]

def email():
    local = R.choice(FIRST) + (str(R.randint(1, 999)) if R.random() < 0.5 else "")
    return f"{local}@{R.choice(DOMAINS)}"

def ip():
    r = R.random()
    if r < 0.7:
        first = R.choice([10, 172, 192, 211, 121, 58, 203, 1, 8])
        if first == 192:
            return f"192.168.{R.randint(0, 255)}.{R.randint(1, 254)}"
        return f"{first}.{R.randint(0, 255)}.{R.randint(0, 255)}.{R.randint(1, 254)}"
    groups = [f"{R.randint(0, 0xffff):x}" for _ in range(8)]
    style = R.random()
    if style < 0.4:
        return ":".join(groups)
    if style < 0.8:
        return f"2001:db8::{groups[5]}:{groups[6]}:{groups[7]}"
    return f"fe80::{groups[6]}:{groups[7]}"

REGION_NAMES = ["서울", "부산", "경기", "강원", "충북", "충남", "전북", "전남", "경북", "경남", "제주", "대구", "인천", "광주", "대전", "울산"]

def license_():
    if R.random() < 0.8:
        return f"{R.randint(11, 28)}-{digits(2)}-{digits(6)}-{digits(2)}"
    return f"{R.choice(REGION_NAMES)}-{digits(2)}-{digits(6)}-{digits(2)}"

def passport():
    L = R.choice("MSROD")
    if R.random() < 0.6:
        return f"{L}{digits(3)}{R.choice('ABCDEFGHJKLNPQRTUVWXYZ')}{digits(4)}"
    return f"{L}{digits(8)}"

PLATE = "가나다라마거너더러머버서어저고노도로모보소오조구누두루무부수우주아바사자배하허호"

def plate():
    s = R.choice(PLATE)
    r = R.random()
    if r < 0.5:
        return f"{R.randint(100, 399)}{s}{digits(4)}"
    if r < 0.85:
        return f"{R.randint(10, 99)}{s}{digits(4)}"
    return f"{R.choice(REGION_NAMES)}{R.randint(10, 99)}{s}{digits(4)}"

SIGUNGU = [
    ("서울특별시", ["강남구", "서초구", "마포구", "종로구", "송파구", "영등포구", "관악구", "노원구"]),
    ("서울", ["강남구", "중구", "용산구", "성동구"]),
    ("부산광역시", ["해운대구", "수영구", "부산진구", "사하구"]),
    ("대구광역시", ["수성구", "달서구", "중구"]),
    ("인천광역시", ["연수구", "남동구", "부평구"]),
    ("광주광역시", ["서구", "북구", "광산구"]),
    ("대전광역시", ["유성구", "서구", "대덕구"]),
    ("울산광역시", ["남구", "울주군"]),
    ("경기도", ["성남시 분당구", "수원시 팔달구", "고양시 일산동구", "용인시 수지구", "화성시", "파주시", "김포시", "안양시 동안구"]),
    ("강원특별자치도", ["춘천시", "원주시", "강릉시"]),
    ("충청북도", ["청주시 흥덕구", "충주시"]),
    ("충청남도", ["천안시 서북구", "아산시", "공주시"]),
    ("전북특별자치도", ["전주시 완산구", "군산시"]),
    ("전라남도", ["여수시", "순천시", "목포시"]),
    ("경상북도", ["포항시 남구", "경주시", "구미시"]),
    ("경상남도", ["창원시 성산구", "김해시", "진주시"]),
    ("제주특별자치도", ["제주시", "서귀포시"]),
]
ROADS = ["테헤란로", "강남대로", "세종대로", "월드컵북로", "판교역로", "올림픽로", "을지로", "중앙로", "해운대로", "센텀중앙로", "동대구로", "인하로", "상무대로", "대학로", "번영로", "시청로", "광교중앙로", "한누리대로", "도산대로", "논현로", "양재대로", "은행로", "충장로", "남부순환로"]
DONGS = ["역삼동", "삼성동", "서교동", "인계동", "정자동", "우동", "범어동", "송도동", "봉명동", "연동", "신림동", "상계동", "화정동", "둔산동", "중동"]

def address():
    sido, sggs = R.choice(SIGUNGU)
    sgg = R.choice(sggs)
    with_sido = R.random() < 0.85
    head = f"{sido} {sgg}" if with_sido else sgg
    if not with_sido and not (sgg.endswith("구") or sgg.endswith("군")):
        head = f"{sido} {sgg}"
    if R.random() < 0.65:
        road = R.choice(ROADS)
        if R.random() < 0.25:
            road += f"{R.randint(1, 150)}번길"
        num = str(R.randint(1, 999))
        if R.random() < 0.15:
            num += f"-{R.randint(1, 30)}"
        return f"{head} {road} {num}"
    num = f"{R.randint(1, 1999)}"
    if R.random() < 0.5:
        num += f"-{R.randint(1, 99)}"
    if R.random() < 0.4:
        num += "번지"
    return f"{head} {R.choice(DONGS)} {num}"

SURN = list("김이박최정강조윤장임한오서신권황안송전홍유고문양손배백허남심노하곽성차주우구민류나진지엄채원천방공현함변염여추도소석선설마길연위표명기반")
GIVEN = ["민수", "지훈", "서연", "현우", "지원", "유나", "도현", "수진", "영희", "철수", "하늘", "예린", "준호", "은지", "태윤", "소연", "동욱", "미영", "성민", "가은", "재훈", "나래", "승현", "혜진", "상우", "다인", "우진", "보람", "정민", "지아", "윤서", "시우", "하준", "채원", "민지", "영수", "순자", "경희", "병철", "광수"]

def person():
    if R.random() < 0.04:
        return R.choice(["남궁", "황보", "제갈", "선우"]) + R.choice(GIVEN)
    return R.choice(SURN) + R.choice(GIVEN)

GEN = {
    "KR_RRN": rrn, "KR_FRN": frn, "KR_CRN": crn, "KR_BRN": brn, "KR_PHONE": phone,
    "CREDIT_CARD": card, "EMAIL": email, "IP_ADDRESS": ip, "KR_DRIVER_LICENSE": license_,
    "KR_PASSPORT": passport, "KR_VEHICLE_PLATE": plate, "KR_ADDRESS": address, "KR_PERSON": person,
}

# ---------------------------------------------------------------- hard negatives

def neg_date():
    y, m = R.randint(2015, 2025), R.randint(1, 12)
    d = R.randint(1, 28)
    return R.choice([f"{y}-{m:02d}-{d:02d}", f"{y}.{m:02d}.{d:02d}", f"{y}년 {m}월 {d}일", f"{y}{m:02d}{d:02d}", f"{y}/{m:02d}/{d:02d}"])

def neg_order():
    return R.choice([
        f"ORD-{R.randint(2020, 2025)}{R.randint(1, 12):02d}{R.randint(1, 28):02d}-{digits(6)}",
        f"INV-{R.randint(2020, 2025)}-{digits(5)}",
        f"A{digits(2)}-{digits(7)}",
        f"PO{digits(10)}",
    ])

def neg_amount():
    return R.choice([f"{R.randint(1, 999):,}원".replace(",", ","), f"{R.randint(1000, 9999999):,}원", f"{R.randint(10, 500)}만원", f"USD {R.randint(10, 9999)}.{R.randint(0, 99):02d}", f"{R.randint(1, 99)}조 {R.randint(1000, 9999)}억 원"])

def neg_code():
    return R.choice([f"SKU-{R.choice('ABCDEFGH')}{digits(4)}-{digits(4)}", f"SM-G{digits(3)}N", f"P/N {digits(5)}-{digits(5)}", f"모델명 KR-{digits(4)}", f"v{R.randint(1, 9)}.{R.randint(0, 20)}.{R.randint(0, 99)}", f"버전 {R.randint(1, 5)}.{R.randint(0, 9)}.{R.randint(0, 20)}"])

def neg_postal():
    return f"{R.randint(1, 63):02d}{digits(3)}"

def neg_bad_rrn():
    # Invalid date (month 13-19 or day 32+) and a failed CRN checksum too.
    while True:
        d12 = f"{R.randint(0, 99):02d}{R.randint(13, 19)}{R.randint(1, 28):02d}{R.choice('1234')}" + digits(5)
        for c in "0123456789":
            if c != crn_check(d12):
                return d12[:6] + "-" + d12[6:] + c

def neg_bad_brn():
    d9 = str(R.randint(101, 899)) + R.choice(["81", "86", "01"]) + digits(4)
    c = str((int(brn_check(d9)) + R.randint(1, 9)) % 10)
    return f"{d9[:3]}-{d9[3:5]}-{d9[5:]}{c}"

def neg_bad_card():
    n = luhn_complete("4", 16)
    bad = n[:-1] + str((int(n[-1]) + R.randint(1, 9)) % 10)
    return "-".join(bad[i:i + 4] for i in range(0, 16, 4))

def neg_embedded():
    g = R.choice([1, 2])
    d12 = birth(g) + str(g) + digits(5)
    r = d12 + rrn_check(d12)
    return R.choice([
        digits(3) + r + digits(2),                       # RRN inside a longer run
        "9" + "010" + digits(8) + digits(3),             # phone inside a longer run
        "TX" + r,                                        # glued to a code prefix
        digits(2) + luhn_complete("4", 16),              # card inside a longer run
    ])

def neg_account_no_ctx():
    return f"{digits(3)}-{digits(3)}-{digits(6)}"

def neg_passport_no_ctx():
    return passport()

def neg_license_bad_region():
    return f"{R.randint(29, 99)}-{digits(2)}-{digits(6)}-{digits(2)}"

def neg_time():
    return f"{R.randint(0, 23):02d}:{R.randint(0, 59):02d}" + (f":{R.randint(0, 59):02d}" if R.random() < 0.5 else "")

def neg_tracking():
    return digits(12)

def neg_qty_range():
    return f"{R.choice(['15', '16', '18'])}{digits(2)}-{R.choice(['15', '16', '18'])}{digits(2)}"

def neg_year_range():
    a = R.randint(1990, 2020)
    return f"{a}-{a + R.randint(1, 5)}"

NEG = {
    "qty_range": neg_qty_range, "year_range": neg_year_range,
    "date": neg_date, "order": neg_order, "amount": neg_amount, "code": neg_code, "postal": neg_postal,
    "bad_rrn": neg_bad_rrn, "bad_brn": neg_bad_brn, "bad_card": neg_bad_card, "embedded": neg_embedded,
    "acct_noctx": neg_account_no_ctx, "pp_noctx": neg_passport_no_ctx, "lic_bad": neg_license_bad_region,
    "time": neg_time, "tracking": neg_tracking,
}

# ---------------------------------------------------------------- templates
# {TYPE} is a labeled value, {n:kind} a hard negative, {BANK} a bank name plus
# a labeled account, {SURN} etc. are plain filler.

CS_LINES = [
    "상담원: 안녕하세요, 고객센터 상담원 {KR_PERSON}입니다. 무엇을 도와드릴까요?",
    "고객: 휴대폰 번호를 {KR_PHONE}로 변경하고 싶어요.",
    "상담원: 본인 확인을 위해 주민등록번호 앞자리와 뒷자리를 말씀해 주세요.",
    "고객: {KR_RRN}입니다.",
    "상담원: {KR_PERSON} 고객님, 확인되었습니다.",
    "고객: 환불은 {BANK}으로 입금해 주세요. 예금주는 {KR_PERSON}입니다.",
    "상담원: 주문하신 상품은 {n:date}에 발송되었고 주문번호는 {n:order}입니다.",
    "고객: 결제한 카드번호가 {CREDIT_CARD}인데 승인 취소 부탁드려요.",
    "상담원: 결제 금액 {n:amount}은 3~5영업일 내 환불됩니다.",
    "고객: 이메일 {EMAIL}으로 영수증 보내주실 수 있나요?",
    "상담원: 배송지는 {KR_ADDRESS}로 되어 있습니다. 맞으실까요?",
    "고객: 네, 우편번호는 {n:postal}이에요.",
    "상담원: 송장번호 {n:tracking}로 조회 가능합니다.",
    "고객: 주차 등록 차량번호는 {KR_VEHICLE_PLATE}입니다.",
    "상담원: {n:time}에 다시 연락드리겠습니다.",
    "고객: 회사 대표번호는 {KR_PHONE}예요.",
    "고객: 제 외국인등록번호는 {KR_FRN}입니다.",
    "상담원: 통화 종료 시각 {n:time}, 상담 시간 {n:amount} 상당의 쿠폰이 발급되었습니다.",
    "상담원: {KR_PERSON}님, 더 궁금하신 점 있으신가요?",
    "고객: 아까 말씀드린 계좌 말고 {BANK}으로 보내주세요.",
]

HR_LINES = [
    "인사기록카드",
    "성명: {KR_PERSON}",
    "주민등록번호: {KR_RRN}",
    "생년월일: {n:date}",
    "휴대전화: {KR_PHONE}",
    "이메일: {EMAIL}",
    "주소: {KR_ADDRESS}",
    "급여 이체 계좌: {BANK}",
    "입사일: {n:date}  사번: E{n:postal}",
    "비상연락처: {KR_PHONE} (보호자 {KR_PERSON})",
    "운전면허번호: {KR_DRIVER_LICENSE}",
    "여권번호: {KR_PASSPORT} (만료일 {n:date})",
    "연봉: {n:amount}",
    "차량번호: {KR_VEHICLE_PLATE}",
    "외국인등록번호: {KR_FRN}",
    "담당자 {KR_PERSON} 과장 / 내선 {n:postal}",
]

CONTRACT_LINES = [
    "용역 계약서",
    "갑: 주식회사 미듬 (사업자등록번호 {KR_BRN}, 법인등록번호 {KR_CRN})",
    "소재지: {KR_ADDRESS}",
    "대표이사 {KR_PERSON}",
    "을: {KR_PERSON} (주민등록번호 {KR_RRN})",
    "주소: {KR_ADDRESS}",
    "연락처: {KR_PHONE}",
    "계약금액: {n:amount} (부가세 별도)",
    "계약기간: {n:date}부터 {n:date}까지",
    "대금 지급 계좌: {BANK}",
    "문서번호 {n:order} / 관리번호 {n:acct_noctx}",
    "사업자번호 {n:bad_brn}는 조회되지 않아 재확인이 필요함.",
    "계약 담당: {EMAIL}, 팩스 {KR_PHONE}",
    "을의 법인등록번호: {KR_CRN}",
]

BANK_LINES = [
    "계좌개설 신청서",
    "신청인 성명: {KR_PERSON}",
    "실명확인번호(주민등록번호): {KR_RRN}",
    "외국인의 경우 외국인등록번호: {KR_FRN}",
    "자택 주소: {KR_ADDRESS}",
    "휴대폰: {KR_PHONE}",
    "자동이체 출금계좌: {BANK}",
    "체크카드 번호: {CREDIT_CARD}",
    "신분증: 운전면허증 (면허번호 {KR_DRIVER_LICENSE})",
    "접수번호 {n:order}, 접수일 {n:date}",
    "거래 한도: 1일 {n:amount}",
    "승인번호 {n:tracking}",
    "여권 사본 제출 (여권번호 {KR_PASSPORT})",
    "카드 유효성 실패 번호 기록: 카드번호 {n:bad_card}",
]

TELECOM_LINES = [
    "이동전화 가입신청서",
    "가입자 성명: {KR_PERSON}",
    "개통 번호: {KR_PHONE}",
    "기존 번호: {KR_PHONE}",
    "생년월일 및 주민번호: {KR_RRN}",
    "요금 납부: 신용카드 {CREDIT_CARD}",
    "요금 자동이체: {BANK}",
    "청구지 주소: {KR_ADDRESS}",
    "청구서 수신 이메일: {EMAIL}",
    "단말기 모델: {n:code}, 일련번호 {n:tracking}",
    "월 요금 {n:amount}, 약정 {n:date} 만료",
    "대리점 사업자등록번호 {KR_BRN}",
]

LOG_LINES = [
    "{n:date} {n:time} INFO login ok user={EMAIL} ip={IP_ADDRESS}",
    "{n:date} {n:time} WARN failed login from {IP_ADDRESS} (attempt 3)",
    "{n:date} {n:time} INFO sms sent to {KR_PHONE} template=OTP",
    "{n:date} {n:time} DEBUG order={n:order} amount={n:amount} status=PAID",
    "{n:date} {n:time} INFO payment card={CREDIT_CARD} approved",
    "{n:date} {n:time} ERROR upstream {IP_ADDRESS} port 8080 timeout build={n:code}",
    "{n:date} {n:time} INFO kyc rrn={KR_RRN} verified",
    "{n:date} {n:time} INFO request_id={n:embedded} latency=35ms",
    "{n:date} {n:time} INFO shipping to {KR_ADDRESS}",
    "{n:date} {n:time} TRACE trace_id={n:embedded}",
    "{n:date} {n:time} INFO refund {BANK} amount={n:amount}",
    "{n:date} {n:time} INFO vehicle entry plate={KR_VEHICLE_PLATE} gate=2",
]

MISC_LINES = [
    "{KR_PERSON}님, 주문하신 상품이 출고되었습니다. 운송장번호 {n:tracking}",
    "보험금 청구서: 피보험자 {KR_PERSON}, 주민등록번호 {KR_RRN}, 입금계좌 {BANK}",
    "렌터카 예약 확인: 운전자 면허번호 {KR_DRIVER_LICENSE}, 차량 {KR_VEHICLE_PLATE}, 연락처 {KR_PHONE}",
    "출국 수속: 여권 번호 {KR_PASSPORT} / 연락처 {KR_PHONE}",
    "거래처 등록: 사업자등록번호 {KR_BRN}, 담당 {EMAIL}",
    "세금계산서 공급받는자 사업자번호 {KR_BRN} 상호 (주)한빛, 대표자 {KR_PERSON}",
    "법인 인감증명 발급: 법인등록번호 {KR_CRN}",
    "사내 공지: 서버 점검 {n:date} {n:time}, 대상 {IP_ADDRESS}",
    "모델 {n:pp_noctx}의 재고는 {n:amount}어치 남아 있습니다.",
    "주민번호 형식 오류 사례: {n:bad_rrn}은 존재하지 않는 날짜입니다.",
    "면허번호 {n:lic_bad}는 지역코드가 올바르지 않습니다.",
    "품번 {n:code}, 바코드 {n:embedded}",
    "우편번호 {n:postal} 지역으로 배송됩니다. 문의 {KR_PHONE}",
    "회의실 예약 {n:date} {n:time}~{n:time}, 참석자 {KR_PERSON} 대리, {KR_PERSON} 차장",
    "택배 기사님 연락처 {KR_PHONE}, 배송지 {KR_ADDRESS}",
    "{KR_PERSON} 씨의 휴대폰 {KR_PHONE}으로 인증번호를 보냈습니다.",
    "해외 결제 카드 {CREDIT_CARD} 사용 내역 {n:amount}",
    "등록번호 {n:acct_noctx}는 내부 문서 번호입니다.",
    # Names with no label or honorific: expected misses (names are precision-first).
    "{KR_PERSON}의 휴가 신청이 승인되었습니다.",
    "어제 {KR_PERSON}하고 통화했는데 계약서 검토가 끝났대요.",
    # Already-masked values and ranges must stay untouched.
    "마스킹된 번호 010-****-{n:postal}, 주민번호 900101-1******, 카드 4111-****-****-1111",
    "수량 {n:qty_range}개, 기간 {n:year_range}년",
    "Tel:{KR_PHONE} / E-mail:{EMAIL}",
    "입금 확인: {BANK} (입금자명 {KR_PERSON})",
    "{n:date} {n:time} 접속 IP {IP_ADDRESS}, 실패 {n:amount}",
]

CATEGORIES = {
    "cs_chat": (CS_LINES, 4, 9),
    "hr_doc": (HR_LINES, 4, 8),
    "contract": (CONTRACT_LINES, 4, 8),
    "bank_form": (BANK_LINES, 4, 8),
    "telecom_form": (TELECOM_LINES, 4, 8),
    "log": (LOG_LINES, 3, 8),
    "misc": (MISC_LINES, 1, 3),
}

SLOT = re.compile(r"\{(n:[a-z_]+|[A-Z_]+)\}")

def render(line, ents, out_parts, pos):
    """Appends a filled template line; returns the new position."""
    last = 0
    for m in SLOT.finditer(line):
        lit = line[last:m.start()]
        out_parts.append(lit)
        pos += len(lit)
        key = m.group(1)
        if key.startswith("n:"):
            v = NEG[key[2:]]()
            out_parts.append(v)
            pos += len(v)
        elif key == "BANK":
            name, acct = bank()
            sep = R.choice([" ", " 계좌 ", ": "])
            v = f"{name}{sep}"
            out_parts.append(v)
            pos += len(v)
            ents.append({"type": "KR_BANK_ACCOUNT", "start": pos, "end": pos + len(acct)})
            out_parts.append(acct)
            pos += len(acct)
        else:
            v = GEN[key]()
            ents.append({"type": key, "start": pos, "end": pos + len(v)})
            out_parts.append(v)
            pos += len(v)
        last = m.end()
    tail = line[last:]
    out_parts.append(tail)
    return pos + len(tail)

def make(idx):
    cat = R.choice(list(CATEGORIES))
    lines, lo, hi = CATEGORIES[cat]
    k = min(R.randint(lo, hi), len(lines))
    chosen = R.sample(lines, k)
    if cat in ("hr_doc", "contract", "bank_form", "telecom_form"):
        # Forms keep their order and start with the title line.
        chosen = [lines[0]] + sorted((l for l in chosen if l != lines[0]), key=lines.index)
    parts, ents, pos = [], [], 0
    for i, line in enumerate(chosen):
        if i:
            parts.append("\n")
            pos += 1
        pos = render(line, ents, parts, pos)
    text = "".join(parts)
    for e in ents:
        assert 0 <= e["start"] < e["end"] <= len(text)
    return {"id": idx, "category": cat, "text": text, "entities": ents}

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "corpus.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for i in range(N_TEXTS):
            f.write(json.dumps(make(i), ensure_ascii=False) + "\n")
    print(f"wrote {N_TEXTS} texts to {path}")

if __name__ == "__main__":
    main()
