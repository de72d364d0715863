//! Admission control per tenant: token buckets in memory for requests/min and tokens/min, and
//! day / month token budgets read from the store's usage counters (which the audit writer
//! updates in the same transaction as each request's record, from the actual token counts).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::time::{day_key, month_key, secs_to_next_day, secs_to_next_month};
use crate::{Result, Store, Tenant};

/// Why a request was not admitted, with how long to wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("rate limit reached: {limit} requests per minute for this tenant")]
    Requests { limit: u32, retry_after_s: u64 },
    #[error("rate limit reached: {limit} tokens per minute for this tenant")]
    Tokens { limit: u64, retry_after_s: u64 },
    #[error("token budget exhausted: {used} of {limit} tokens used today (UTC)")]
    DayBudget {
        used: u64,
        limit: u64,
        retry_after_s: u64,
    },
    #[error("token budget exhausted: {used} of {limit} tokens used this month (UTC)")]
    MonthBudget {
        used: u64,
        limit: u64,
        retry_after_s: u64,
    },
}

impl Denied {
    pub fn retry_after_s(&self) -> u64 {
        match self {
            Denied::Requests { retry_after_s, .. }
            | Denied::Tokens { retry_after_s, .. }
            | Denied::DayBudget { retry_after_s, .. }
            | Denied::MonthBudget { retry_after_s, .. } => *retry_after_s,
        }
    }

    /// True for budgets (OpenAI's `insufficient_quota`), false for rate limits.
    pub fn is_budget(&self) -> bool {
        matches!(self, Denied::DayBudget { .. } | Denied::MonthBudget { .. })
    }
}

/// A token bucket: `capacity` per minute, refilled continuously. The level may go negative
/// when actual usage exceeds what was taken at admission (debt paid back by refill).
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    last_ms: u64,
}

impl Bucket {
    fn new(capacity: f64, now: u64) -> Bucket {
        Bucket {
            capacity,
            level: capacity,
            last_ms: now,
        }
    }

    fn refill(&mut self, capacity: f64, now: u64) {
        self.capacity = capacity;
        let dt = now.saturating_sub(self.last_ms) as f64;
        self.level = (self.level + dt * capacity / 60_000.0).min(capacity);
        self.last_ms = now.max(self.last_ms);
    }

    /// Seconds until `n` is available (0 = now).
    fn wait_s(&self, n: f64) -> u64 {
        let need = n.min(self.capacity) - self.level;
        if need <= 0.0 {
            0
        } else {
            ((need * 60.0 / self.capacity).ceil() as u64).max(1)
        }
    }
}

#[derive(Debug, Default)]
struct TenantBuckets {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
}

/// Per-tenant rate limits in this process (several instances each apply the full rate).
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<String, TenantBuckets>>,
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter::default()
    }

    /// Admits a request estimated at `est_tokens` (prompt tokens plus the most it may
    /// generate, as the caller chooses) at `now_ms`, or says why not. Budgets admit while the
    /// period's usage is below the budget, so a tenant stops within one request of it.
    pub fn admit(
        &self,
        store: &dyn Store,
        tenant: &Tenant,
        est_tokens: u64,
        now_ms: u64,
    ) -> Result<std::result::Result<(), Denied>> {
        let c = &tenant.config;
        if let Some(limit) = c.tokens_per_day {
            let used = store.usage(&tenant.id, &day_key(now_ms))?.tokens();
            if used >= limit {
                return Ok(Err(Denied::DayBudget {
                    used,
                    limit,
                    retry_after_s: secs_to_next_day(now_ms),
                }));
            }
        }
        if let Some(limit) = c.tokens_per_month {
            let used = store.usage(&tenant.id, &month_key(now_ms))?.tokens();
            if used >= limit {
                return Ok(Err(Denied::MonthBudget {
                    used,
                    limit,
                    retry_after_s: secs_to_next_month(now_ms),
                }));
            }
        }
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = all.entry(tenant.id.clone()).or_default();
        let rq = c.requests_per_min.map(|limit| {
            let bk = b
                .requests
                .get_or_insert_with(|| Bucket::new(limit as f64, now_ms));
            bk.refill(limit as f64, now_ms);
            (limit, bk.wait_s(1.0))
        });
        if let Some((limit, wait)) = rq {
            if wait > 0 {
                return Ok(Err(Denied::Requests {
                    limit,
                    retry_after_s: wait,
                }));
            }
        }
        let tk = c.tokens_per_min.map(|limit| {
            let bk = b
                .tokens
                .get_or_insert_with(|| Bucket::new(limit as f64, now_ms));
            bk.refill(limit as f64, now_ms);
            // A bucket never holds more than its capacity: a request larger than a minute's
            // worth waits for a full bucket.
            (limit, bk.wait_s(est_tokens as f64))
        });
        if let Some((limit, wait)) = tk {
            if wait > 0 {
                return Ok(Err(Denied::Tokens {
                    limit,
                    retry_after_s: wait,
                }));
            }
        }
        if let Some(bk) = b.requests.as_mut() {
            bk.level -= 1.0;
        }
        if let Some(bk) = b.tokens.as_mut() {
            bk.level -= est_tokens as f64;
        }
        Ok(Ok(()))
    }

    /// Corrects the tokens/min bucket once the actual count is known.
    pub fn settle(&self, tenant: &str, est_tokens: u64, actual_tokens: u64) {
        let mut all = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bk) = all.get_mut(tenant).and_then(|b| b.tokens.as_mut()) {
            bk.level -= actual_tokens as f64 - est_tokens as f64;
            bk.level = bk.level.min(bk.capacity);
        }
    }
}
