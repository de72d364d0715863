//! Debug helper: prints what the analyzer finds in each argument.
fn main() {
    let a = mideum_guard::Analyzer::new().expect("analyzer");
    for t in std::env::args().skip(1) {
        for e in a.analyze(&t) {
            println!("{} {:?} {}", e.kind, &t[e.byte_start..e.byte_end], e.score);
        }
    }
}
