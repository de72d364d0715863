//! The benchmark examples' pseudo-random inputs (xorshift64): deterministic, no dependency.
//! Included with `#[path = "common/rng.rs"] mod rng;` (a file under a subfolder without
//! `main.rs` is not an example of its own).

/// Returns a generator of values in [-1, 1] (steps of 1/1000), seeded with `seed`.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) % 2001) as f32 / 1000.0 - 1.0
    }
}
