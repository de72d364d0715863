//! Token sampling: greedy, temperature, top-k, top-p, min-p, repetition / presence /
//! frequency penalties, with a seedable generator so a seed reproduces a run exactly.
//! The order of steps follows transformers' logits processors: penalties, temperature,
//! top-k, top-p, min-p.

use mideum_model::GenerationDefaults;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables (transformers' multiplicative penalty on tokens already seen).
    pub repetition_penalty: f32,
    /// OpenAI-style additive penalties.
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// The model's `generation_config.json` as transformers would apply it: greedy unless
    /// `do_sample` is true, then its temperature/top-k/top-p with transformers' defaults
    /// (1.0, 50, 1.0) for what it leaves out.
    pub fn from_defaults(g: &GenerationDefaults) -> SamplingParams {
        let mut p = SamplingParams {
            repetition_penalty: g.repetition_penalty.unwrap_or(1.0),
            ..Default::default()
        };
        if g.do_sample == Some(true) {
            p.temperature = g.temperature.unwrap_or(1.0);
            p.top_k = g.top_k.unwrap_or(50);
            p.top_p = g.top_p.unwrap_or(1.0);
            p.min_p = g.min_p.unwrap_or(0.0);
        }
        p
    }

    /// Checks ranges; returns a message naming the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature must be >= 0, got {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return Err(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        for (n, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return Err(format!("{n} must be in [-2, 2], got {v}"));
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded through SplitMix64: small, fast and reproducible across platforms.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let r = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        r
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
    /// Scratch: (token, probability) candidates, reused between calls.
    cand: Vec<(u32, f32)>,
    counts: std::collections::HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            t ^ (std::process::id() as u64) << 32
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            cand: Vec::new(),
            counts: Default::default(),
        }
    }

    /// Picks the next token from `logits` (modified in place) given the tokens seen so far
    /// (`history`: the prompt and what was generated, for the penalties).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32], generated: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            let mut seen: Vec<u32> = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for &t in &seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            self.counts.clear();
            for &t in generated {
                *self.counts.entry(t).or_insert(0) += 1;
            }
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
                }
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| l.is_finite())
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        if self.cand.is_empty() {
            return argmax(logits);
        }
        // Order is by logit descending, ties by id, so every cut below is deterministic. Only
        // what a cut needs is ordered: top-k selects (O(vocab)), top-p sorts the smallest head
        // of the distribution that reaches `top_p`; a full sort of 131k candidates per token
        // would cost milliseconds per stream.
        let cmp = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(p.top_k - 1, cmp);
            self.cand.truncate(p.top_k);
        }
        let max = self
            .cand
            .iter()
            .map(|c| c.1)
            .fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for c in self.cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            sum += c.1 as f64;
        }
        for c in self.cand.iter_mut() {
            c.1 = (c.1 as f64 / sum) as f32;
        }
        if p.top_p < 1.0 {
            let n = self.cand.len();
            let mut head = n.min(64);
            loop {
                if head < n {
                    self.cand.select_nth_unstable_by(head - 1, cmp);
                }
                self.cand[..head].sort_unstable_by(cmp);
                let mut cum = 0f32;
                let mut keep = None;
                for (i, c) in self.cand[..head].iter().enumerate() {
                    cum += c.1;
                    if cum >= p.top_p {
                        keep = Some(i + 1);
                        break;
                    }
                }
                match keep {
                    Some(k) => {
                        self.cand.truncate(k);
                        break;
                    }
                    // Rounding can leave the total just under top_p: keep everything.
                    None if head == n => break,
                    None => head = (head * 8).min(n),
                }
            }
        }
        if p.min_p > 0.0 {
            let top = self.cand.iter().map(|c| c.1).fold(0f32, f32::max);
            let thr = top * p.min_p;
            self.cand.retain(|c| c.1 >= thr);
        }
        let total: f64 = self.cand.iter().map(|c| c.1 as f64).sum();
        let mut r = self.rng.next_f64() * total;
        for c in &self.cand {
            r -= c.1 as f64;
            if r < 0.0 {
                return c.0;
            }
        }
        self.cand[self.cand.len() - 1].0
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] || x[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, -1.0, 2.9]
    }

    #[test]
    fn greedy_picks_max() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut logits(), &[], &[]), 1);
    }

    #[test]
    fn seed_reproduces_and_top_k_restricts() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            seed: Some(7),
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(p.clone());
            (0..200)
                .map(|_| s.sample(&mut logits(), &[], &[]))
                .collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        assert!(a.iter().all(|&t| t == 1 || t == 5));
        assert!(a.contains(&1) && a.contains(&5));
    }

    #[test]
    fn top_p_over_a_large_vocabulary_keeps_exactly_the_nucleus() {
        // A flat-ish distribution over 5,000 ids: the 0.9 nucleus holds thousands of them, so
        // the partial ordering has to widen several times before it reaches top_p.
        let mut st = 12345u64;
        let base: Vec<f32> = (0..5000)
            .map(|_| {
                st = st
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((st >> 40) as f32 / (1u64 << 24) as f32) * 2.0
            })
            .collect();
        let mut order: Vec<usize> = (0..base.len()).collect();
        order.sort_by(|&a, &b| base[b].total_cmp(&base[a]).then(a.cmp(&b)));
        let max = base[order[0]];
        let z: f64 = base.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let (mut cum, mut nucleus) = (0f64, std::collections::HashSet::new());
        for &i in &order {
            nucleus.insert(i as u32);
            cum += ((base[i] - max) as f64).exp() / z;
            if cum >= 0.9 {
                break;
            }
        }
        assert!(nucleus.len() > 512, "{}", nucleus.len());
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: Some(3),
            ..Default::default()
        });
        let (mut outside, mut seen) = (0, std::collections::HashSet::new());
        for _ in 0..2000 {
            let t = s.sample(&mut base.clone(), &[], &[]);
            seen.insert(t);
            // f32 accumulation may move the boundary by an id or two, never more.
            if !nucleus.contains(&t) {
                outside += 1;
            }
        }
        assert!(outside <= 2, "{outside} samples outside the nucleus");
        // The whole nucleus is in play, not just the first ordered head.
        assert!(seen.len() > 300, "only {} distinct tokens", seen.len());
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.5,
            seed: Some(1),
            ..Default::default()
        });
        // p(1) ≈ 0.40, p(5) ≈ 0.36: the nucleus at 0.5 holds exactly those two.
        for _ in 0..100 {
            let t = s.sample(&mut logits(), &[], &[]);
            assert!(t == 1 || t == 5);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..100 {
            let t = s.sample(&mut logits(), &[], &[]);
            assert!(t == 1 || t == 5 || t == 2, "{t}");
        }
    }

    #[test]
    fn repetition_penalty_like_transformers() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        let mut l = logits();
        // token 1 (3.0 → 1.5) and 4 (-1 → -2) are penalised; 5 (2.9) wins.
        assert_eq!(s.sample(&mut l, &[1, 4], &[]), 5);
        assert_eq!(l[4], -2.0);
    }

    #[test]
    fn defaults_follow_generation_config() {
        let g = GenerationDefaults {
            do_sample: Some(true),
            temperature: Some(0.8),
            top_k: Some(20),
            top_p: Some(0.75),
            ..Default::default()
        };
        let p = SamplingParams::from_defaults(&g);
        assert_eq!((p.temperature, p.top_k, p.top_p), (0.8, 20, 0.75));
        assert_eq!(
            SamplingParams::from_defaults(&GenerationDefaults::default()).temperature,
            0.0
        );
        assert!(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
