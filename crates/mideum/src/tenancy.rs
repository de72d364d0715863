//! `mideum tenants|keys|audit`: the store's operations from the command line. Every command
//! takes `--store sqlite:PATH|postgres://…` (or `MIDEUM_STORE`).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use mideum_store::audit::{self, ExportFormat, DEFAULT_RETENTION_MS};
use mideum_store::crypto::audit_key_from_env;
use mideum_store::time::{now_ms, parse_date, rfc3339};
use mideum_store::{keys, AuditFilter, AuditRecord, AuditWriter, Store, Tenant, TenantConfig};

#[derive(Args, Clone)]
pub struct StoreArg {
    /// The tenant store: `sqlite:PATH` or `postgres://USER@HOST[:PORT]/DB` (default: $MIDEUM_STORE).
    #[arg(long, global = true)]
    pub store: Option<String>,
}

impl StoreArg {
    pub fn url(&self) -> Result<String> {
        match self.store.clone().or_else(|| std::env::var("MIDEUM_STORE").ok()) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => bail!("no store given: pass --store sqlite:PATH or postgres://USER@HOST/DB (or set MIDEUM_STORE)"),
        }
    }

    pub fn open(&self) -> Result<Box<dyn Store>> {
        let url = self.url()?;
        mideum_store::open(&url).with_context(|| format!("cannot open the store {}", redact(&url)))
    }
}

/// A store URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[derive(Args)]
pub struct TenantsArgs {
    #[command(subcommand)]
    cmd: TenantsCmd,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Subcommand)]
enum TenantsCmd {
    /// Add a tenant.
    Add(AddTenant),
    /// List tenants.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant, with today's and this month's usage.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct AddTenant {
    /// Tenant id: letters, digits, `_`, `-`, `.`.
    id: String,
    /// Models the tenant may use, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Named policy from mideum.toml (default: the default policy).
    #[arg(long)]
    policy: Option<String>,
    /// Default data class of the tenant's requests, e.g. `confidential`.
    #[arg(long)]
    data_class: Option<String>,
    /// Visible AI-generated notice the tenant requires.
    #[arg(long)]
    notice: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Token budget per UTC day.
    #[arg(long)]
    tokens_per_day: Option<u64>,
    /// Token budget per UTC month.
    #[arg(long)]
    tokens_per_month: Option<u64>,
}

fn print_tenant(t: &Tenant, s: &dyn Store) -> Result<()> {
    let c = &t.config;
    let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
    let num = |o: Option<u64>| {
        o.map(|v| v.to_string())
            .unwrap_or_else(|| "unlimited".into())
    };
    println!("tenant {}  (created {})", t.id, rfc3339(t.created_ms));
    println!(
        "  models: {}",
        c.allowed_models
            .as_ref()
            .map(|m| m.join(", "))
            .unwrap_or_else(|| "all".into())
    );
    println!(
        "  policy: {}  data class: {}  notice: {}",
        opt(&c.policy),
        opt(&c.data_class),
        opt(&c.notice)
    );
    println!(
        "  rate: {} req/min, {} tokens/min; budget: {} tokens/day, {} tokens/month",
        num(c.requests_per_min.map(u64::from)),
        num(c.tokens_per_min),
        num(c.tokens_per_day),
        num(c.tokens_per_month)
    );
    let now = now_ms();
    for p in [
        mideum_store::time::day_key(now),
        mideum_store::time::month_key(now),
    ] {
        let u = s.usage(&t.id, &p)?;
        println!(
            "  usage {p}: {} requests, {} prompt + {} completion tokens",
            u.requests, u.prompt_tokens, u.completion_tokens
        );
    }
    Ok(())
}

pub fn run_tenants(a: &TenantsArgs) -> Result<()> {
    let s = a.store.open()?;
    match &a.cmd {
        TenantsCmd::Add(t) => {
            mideum_store::check_tenant_id(&t.id)?;
            let tenant = Tenant {
                id: t.id.clone(),
                config: TenantConfig {
                    allowed_models: t.models.clone(),
                    policy: t.policy.clone(),
                    data_class: t.data_class.clone(),
                    notice: t.notice.clone(),
                    requests_per_min: t.rpm,
                    tokens_per_min: t.tpm,
                    tokens_per_day: t.tokens_per_day,
                    tokens_per_month: t.tokens_per_month,
                },
                created_ms: now_ms(),
            };
            s.create_tenant(&tenant)?;
            println!("added tenant {}", tenant.id);
        }
        TenantsCmd::List { json } => {
            let all = s.tenants()?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no tenants (add one with `mideum tenants add ID`)");
            } else {
                for t in all {
                    println!("{}", t.id);
                }
            }
        }
        TenantsCmd::Show { id, json } => {
            let Some(t) = s.tenant(id)? else {
                bail!("no tenant `{id}` (see `mideum tenants list`)")
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print_tenant(&t, s.as_ref())?;
            }
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    cmd: KeysCmd,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create an API key for a tenant; the key is printed once and never stored.
    Create {
        tenant: String,
        #[arg(long)]
        label: Option<String>,
        /// Days until the key expires (default: never).
        #[arg(long)]
        expires_in_days: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List keys (ids, never secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id; effective on the next request.
    Revoke { key_id: String },
}

pub fn run_keys(a: &KeysArgs) -> Result<()> {
    let s = a.store.open()?;
    match &a.cmd {
        KeysCmd::Create {
            tenant,
            label,
            expires_in_days,
            json,
        } => {
            let exp =
                expires_in_days.map(|d| now_ms().saturating_add(d.saturating_mul(86_400_000)));
            let k = keys::create_key(s.as_ref(), tenant, label.clone(), exp)?;
            if *json {
                let mut v = serde_json::to_value(&k.key)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("secret".into(), k.secret.clone().into());
                }
                println!("{v}");
            } else {
                eprintln!(
                    "created key {} for tenant {tenant}; it is shown only now:",
                    k.key.id
                );
                println!("{}", k.secret);
            }
        }
        KeysCmd::List { tenant, json } => {
            let ks = s.keys(tenant.as_deref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&ks)?);
            } else {
                let now = now_ms();
                for k in ks {
                    let state = if k.revoked_ms.is_some() {
                        "revoked".to_string()
                    } else if k.expires_ms.is_some_and(|e| e <= now) {
                        "expired".to_string()
                    } else {
                        k.expires_ms
                            .map(|e| format!("expires {}", rfc3339(e)))
                            .unwrap_or_else(|| "active".into())
                    };
                    println!(
                        "{}  {}  {}  {}",
                        k.id,
                        k.tenant,
                        state,
                        k.label.unwrap_or_default()
                    );
                }
            }
        }
        KeysCmd::Revoke { key_id } => {
            if !s.revoke_key(key_id, None, now_ms())? {
                bail!("no key `{key_id}` (see `mideum keys list`)");
            }
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    cmd: AuditCmd,
    #[command(flatten)]
    store: StoreArg,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the whole hash chain; exits 1 and names the first broken record if any.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Write audit records as JSON lines or CSV.
    Export {
        /// From this date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until this date, exclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value = "jsonl")]
        format: String,
        /// Write to this file instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
    /// Delete records older than --before (default: 2 years ago), keeping a signed anchor
    /// (needs MIDEUM_AUDIT_KEY or MIDEUM_AUDIT_KEY_FILE).
    Prune {
        #[arg(long)]
        before: Option<String>,
    },
    /// Measure audit write throughput and the latency added per request at a fixed rate.
    Bench {
        /// Records for the throughput test.
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        /// Requests per second for the latency test.
        #[arg(long, default_value_t = 500)]
        rate: u64,
        /// Seconds of the latency test.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
}

pub fn run_audit(a: &AuditArgs) -> Result<()> {
    let s = a.store.open()?;
    match &a.cmd {
        AuditCmd::Verify { json } => {
            let key = audit_key_from_env()?;
            eprintln!("verifying the audit chain in {} …", redact(&a.store.url()?));
            let r = audit::verify(s.as_ref(), key.as_deref())?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else if let Some(b) = &r.first_break {
                println!("BROKEN at record {} ({:?}): {}", b.seq, b.kind, b.detail);
                println!(
                    "{} records before it verified",
                    r.records_checked.saturating_sub(1)
                );
            } else {
                println!(
                    "ok: {} records verified{}; head {}",
                    r.records_checked,
                    r.anchored_through
                        .map(|t| format!(" after a signed anchor through record {t}"))
                        .unwrap_or_default(),
                    r.head_hash
                );
            }
            if !r.ok {
                std::process::exit(1);
            }
        }
        AuditCmd::Export {
            since,
            until,
            tenant,
            format,
            output,
        } => {
            let format: ExportFormat = format.parse()?;
            let filter = AuditFilter {
                tenant: tenant.clone(),
                since_ms: since.as_deref().map(parse_date).transpose()?,
                until_ms: until.as_deref().map(parse_date).transpose()?,
            };
            let n = match output {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("cannot create {}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = audit::export(s.as_ref(), &filter, format, &mut w)?;
                    w.flush()?;
                    n
                }
                None => {
                    let stdout = std::io::stdout();
                    let mut w = std::io::BufWriter::new(stdout.lock());
                    let n = audit::export(s.as_ref(), &filter, format, &mut w)?;
                    w.flush()?;
                    n
                }
            };
            eprintln!("exported {n} records");
        }
        AuditCmd::Prune { before } => {
            let Some(key) = audit_key_from_env()? else {
                bail!("pruning signs an anchor: set MIDEUM_AUDIT_KEY (16+ bytes) or MIDEUM_AUDIT_KEY_FILE");
            };
            let before_ms = match before {
                Some(b) => parse_date(b)?,
                None => now_ms().saturating_sub(DEFAULT_RETENTION_MS),
            };
            eprintln!(
                "verifying, then pruning records before {} …",
                rfc3339(before_ms)
            );
            let r = audit::prune(s.as_ref(), before_ms, &key)?;
            match r.anchor {
                Some(an) => println!(
                    "pruned {} records; signed anchor through record {}",
                    r.pruned, an.through_seq
                ),
                None => println!("nothing to prune before {}", rfc3339(before_ms)),
            }
        }
        AuditCmd::Bench {
            records,
            rate,
            seconds,
        } => {
            drop(s);
            bench(&a.store, *records, *rate, *seconds)?;
        }
    }
    Ok(())
}

fn bench_record(i: u64) -> AuditRecord {
    AuditRecord {
        time_ms: now_ms(),
        tenant: format!("bench-{}", i % 4),
        key_id: "mdk_bench".into(),
        origin: "10.0.0.1".into(),
        user: None,
        endpoint: "chat.completions".into(),
        requested_model: "midm-mini".into(),
        served_model: Some("midm-mini".into()),
        backend: Some("local".into()),
        track: Some("local".into()),
        findings: vec![("phone".into(), 1)],
        decision: "allow".into(),
        reason: "bench".into(),
        prompt_tokens: 100,
        completion_tokens: 50,
        latency_ms: 200,
        status: 200,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn bench(store: &StoreArg, records: u64, rate: u64, seconds: u64) -> Result<()> {
    if rate == 0 || records == 0 {
        bail!("--rate and --records must be at least 1");
    }
    let url = store.url()?;
    // Throughput: everything submitted at once, committed in groups.
    let w = AuditWriter::start(mideum_store::open(&url)?)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let t0 = Instant::now();
    for i in 0..records {
        let tx = tx.clone();
        w.submit(bench_record(i), move |r| {
            let _ = tx.send(r.is_ok());
        });
    }
    drop(tx);
    let ok = rx.iter().filter(|x| *x).count() as u64;
    let dt = t0.elapsed().as_secs_f64();
    if ok != records {
        bail!("{} of {records} records failed", records - ok);
    }
    println!(
        "throughput: {records} records in {dt:.2} s = {:.0} records/s ({})",
        records as f64 / dt,
        redact(&url)
    );
    // Latency: an open loop at `rate` per second; each request waits for its record.
    let lat = Arc::new(Mutex::new(Vec::with_capacity((rate * seconds) as usize)));
    let n = rate * seconds;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let (dtx, drx) = std::sync::mpsc::channel();
    for i in 0..n {
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let sent = Instant::now();
        let lat = lat.clone();
        let dtx = dtx.clone();
        w.submit(bench_record(i), move |r| {
            lat.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sent.elapsed().as_secs_f64() * 1e3);
            let _ = dtx.send(r.is_ok());
        });
        if i % rate == 0 {
            eprint!("\rlatency test: {}/{seconds} s", i / rate);
        }
    }
    drop(dtx);
    let ok = drx.iter().filter(|x| *x).count() as u64;
    eprintln!();
    let mut l = lat.lock().unwrap_or_else(|p| p.into_inner()).clone();
    l.sort_by(|a, b| a.total_cmp(b));
    println!(
        "latency added at {rate} req/s over {seconds} s ({ok}/{n} ok): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        pct(&l, 0.5),
        pct(&l, 0.9),
        pct(&l, 0.99),
        pct(&l, 1.0)
    );
    w.shutdown();
    Ok(())
}
