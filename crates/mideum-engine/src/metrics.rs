//! Counters, gauges and latency histograms the scheduler updates and the server exposes in
//! Prometheus text format. Lock-free: atomics only.

use std::sync::atomic::{AtomicU64, Ordering};

/// A cumulative histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, secs: f64) {
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            out.push_str(&format!(
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}\n",
                c.load(Ordering::Relaxed)
            ));
        }
        let n = self.count.load(Ordering::Relaxed);
        out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}\n"));
        let l = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        out.push_str(&format!(
            "{name}_sum{l} {}\n{name}_count{l} {n}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
}

const TTFT_BOUNDS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BOUNDS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

pub struct Metrics {
    pub model: String,
    pub requests_total: AtomicU64,
    pub requests_rejected_total: AtomicU64,
    pub requests_cancelled_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub generation_tokens_total: AtomicU64,
    pub queue_depth: AtomicU64,
    pub running: AtomicU64,
    pub last_batch_size: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_cached: AtomicU64,
    pub prefix_lookup_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub ttft: Histogram,
    pub inter_token: Histogram,
}

impl Metrics {
    pub fn new(model: &str) -> Metrics {
        Metrics {
            model: model.to_string(),
            requests_total: AtomicU64::new(0),
            requests_rejected_total: AtomicU64::new(0),
            requests_cancelled_total: AtomicU64::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            generation_tokens_total: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            running: AtomicU64::new(0),
            last_batch_size: AtomicU64::new(0),
            kv_blocks_total: AtomicU64::new(0),
            kv_blocks_used: AtomicU64::new(0),
            kv_blocks_cached: AtomicU64::new(0),
            prefix_lookup_tokens: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            ttft: Histogram::new(TTFT_BOUNDS),
            inter_token: Histogram::new(ITL_BOUNDS),
        }
    }

    fn labels(&self) -> String {
        format!(
            "model=\"{}\"",
            self.model
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n")
        )
    }
}

/// Renders the metrics of every served model in Prometheus text format, each family once.
pub fn render_all(ms: &[&Metrics]) -> String {
    let mut out = String::new();
    type Get = fn(&Metrics) -> f64;
    let families: Vec<(&str, &str, &str, Get)> = vec![
        (
            "mideum_requests_total",
            "counter",
            "Requests accepted.",
            |m| m.requests_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_requests_rejected_total",
            "counter",
            "Requests refused because the queue was full.",
            |m| m.requests_rejected_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_requests_cancelled_total",
            "counter",
            "Requests whose client went away before the end.",
            |m| m.requests_cancelled_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_prompt_tokens_total",
            "counter",
            "Prompt tokens computed (cached prefix tokens excluded).",
            |m| m.prompt_tokens_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_generation_tokens_total",
            "counter",
            "Tokens generated.",
            |m| m.generation_tokens_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_queue_depth",
            "gauge",
            "Requests waiting to start.",
            |m| m.queue_depth.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_running_sequences",
            "gauge",
            "Sequences being generated.",
            |m| m.running.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_batch_size",
            "gauge",
            "Sequences in the last forward pass.",
            |m| m.last_batch_size.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_kv_cache_blocks_total",
            "gauge",
            "KV cache blocks in the budget.",
            |m| m.kv_blocks_total.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_kv_cache_blocks_used",
            "gauge",
            "KV cache blocks held by running sequences.",
            |m| m.kv_blocks_used.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_kv_cache_blocks_cached",
            "gauge",
            "Unreferenced KV blocks kept for prefix reuse.",
            |m| m.kv_blocks_cached.load(Ordering::Relaxed) as f64,
        ),
        (
            "mideum_kv_cache_usage_ratio",
            "gauge",
            "Fraction of KV blocks held by running sequences.",
            |m| {
                m.kv_blocks_used.load(Ordering::Relaxed) as f64
                    / m.kv_blocks_total.load(Ordering::Relaxed).max(1) as f64
            },
        ),
        (
            "mideum_prefix_cache_hit_ratio",
            "gauge",
            "Prompt tokens served from the prefix cache over prompt tokens looked up.",
            |m| {
                let l = m.prefix_lookup_tokens.load(Ordering::Relaxed);
                if l == 0 {
                    0.0
                } else {
                    m.prefix_hit_tokens.load(Ordering::Relaxed) as f64 / l as f64
                }
            },
        ),
        (
            "mideum_prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens served from the prefix cache.",
            |m| m.prefix_hit_tokens.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, get) in families {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for m in ms {
            out.push_str(&format!("{name}{{{}}} {}\n", m.labels(), get(m)));
        }
    }
    for (name, help, pick) in [
        (
            "mideum_time_to_first_token_seconds",
            "Time from arrival to the first generated token.",
            0,
        ),
        (
            "mideum_inter_token_latency_seconds",
            "Time between consecutive generated tokens.",
            1,
        ),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        for m in ms {
            let h = if pick == 0 { &m.ttft } else { &m.inter_token };
            h.render(name, &m.labels(), &mut out);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("midm-mini");
        let n = Metrics::new("other");
        m.requests_total.fetch_add(3, Ordering::Relaxed);
        m.ttft.observe(0.2);
        m.ttft.observe(3.0);
        let s = render_all(&[&m, &n]);
        assert_eq!(s.matches("# TYPE mideum_requests_total counter").count(), 1);
        assert!(s.contains("mideum_requests_total{model=\"other\"} 0\n"));
        assert!(s.contains("mideum_requests_total{model=\"midm-mini\"} 3\n"));
        assert!(s.contains(
            "mideum_time_to_first_token_seconds_bucket{model=\"midm-mini\",le=\"0.25\"} 1\n"
        ));
        assert!(s.contains(
            "mideum_time_to_first_token_seconds_bucket{model=\"midm-mini\",le=\"+Inf\"} 2\n"
        ));
        assert!(s.contains("mideum_time_to_first_token_seconds_count{model=\"midm-mini\"} 2\n"));
    }
}
