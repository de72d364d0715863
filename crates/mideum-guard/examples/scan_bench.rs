//! Scan throughput benchmark (a bench binary, not a timed test):
//! `cargo run --release -p mideum-guard --example scan_bench [MB]`.
//!
//! Measures single-threaded `Analyzer::analyze` on two texts of a few MB:
//! the labeled corpus alone (dense: several identifiers per line) and a
//! realistic mix where corpus texts are interleaved with ordinary Korean
//! business prose that holds no personal data.

use std::time::Instant;

const PROSE: &[&str] = &[
    "이번 분기 매출은 전년 대비 12% 증가했으며, 주요 원인은 신규 고객 확보와 서비스 개선에 있습니다.",
    "회의 결과 다음 주까지 요구사항 정의서를 정리하고 개발 일정을 확정하기로 했습니다.",
    "고객 만족도 조사에 따르면 응답자의 대부분이 상담 속도에 만족한다고 답했습니다.",
    "시스템 점검으로 인해 일부 기능이 일시적으로 제한될 수 있으니 양해 부탁드립니다.",
    "신규 요금제는 데이터 제공량을 늘리고 월 기본료를 낮춘 것이 특징입니다.",
    "보고서 초안은 공유 폴더에 올려 두었으니 검토 후 의견 주시기 바랍니다.",
    "The quarterly review covers revenue, churn and the roadmap for 2025 in detail.",
    "택배 물량 증가로 배송이 1~2일 지연될 수 있습니다. 빠른 처리를 위해 노력하겠습니다.",
];

fn load_corpus() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/guard/corpus.jsonl"
    );
    let raw = std::fs::read_to_string(path).unwrap_or_default();
    raw.lines()
        .filter_map(|l| {
            let key = "\"text\": \"";
            let s = l.find(key)? + key.len();
            let e = l[s..].find("\", \"entities\"")? + s;
            Some(l[s..e].replace("\\n", "\n"))
        })
        .collect()
}

fn build(target: usize, corpus: &[String], prose_per_doc: usize) -> String {
    let mut out = String::with_capacity(target + 4096);
    let mut i = 0;
    while out.len() < target {
        if !corpus.is_empty() {
            out.push_str(&corpus[i % corpus.len()]);
            out.push('\n');
        }
        for k in 0..prose_per_doc {
            out.push_str(PROSE[(i + k) % PROSE.len()]);
            out.push('\n');
        }
        i += 1;
    }
    out
}

fn measure(name: &str, a: &mideum_guard::Analyzer, text: &str) {
    let mut found = a.analyze(text).len();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        found = a.analyze(text).len();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mb = text.len() as f64 / 1e6;
    println!(
        "{name:<28} {mb:>6.1} MB  {:>8.1} MB/s  ({found} entities)",
        mb / best
    );
}

fn main() {
    let mb: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let target = mb * 1_000_000;
    let a = match mideum_guard::Analyzer::new() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("analyzer: {e}");
            std::process::exit(1);
        }
    };
    let corpus = load_corpus();
    if corpus.is_empty() {
        eprintln!("testdata/guard/corpus.jsonl not found; run gen_corpus.py");
        std::process::exit(1);
    }
    measure("corpus only (PII-dense)", &a, &build(target, &corpus, 0));
    measure("mixed (1 doc : 8 prose)", &a, &build(target, &corpus, 8));
    measure("prose only (no PII)", &a, &build(target, &[], 8));
    if std::env::var_os("GUARD_BENCH_SPLIT").is_some() {
        let dense = build(target, &corpus, 0);
        let no_person: Vec<_> = mideum_guard::EntityType::ALL
            .into_iter()
            .filter(|t| *t != mideum_guard::EntityType::KrPerson)
            .collect();
        match mideum_guard::Analyzer::new() {
            Ok(b) => measure("dense, names off", &b.with_types(&no_person), &dense),
            Err(e) => eprintln!("{e}"),
        }
    }
}
