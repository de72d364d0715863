//! The store scenarios on a real PostgreSQL server at `MIDEUM_TEST_PG_URL` (each scenario in a
//! new database). Skipped with a notice when the variable is unset, unless `MIDEUM_REQUIRE_PG=1`
//! (CI sets it), which turns the skip into a failure.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::{Harness, Raw};
use mideum_store::PgStore;

struct Pg {
    admin_url: String,
}

static N: AtomicU32 = AtomicU32::new(0);

impl Harness for Pg {
    fn fresh(&self) -> (String, Raw) {
        let name = format!(
            "mideum_t{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = postgres::Client::connect(&self.admin_url, postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let (base, query) = match self.admin_url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.admin_url.as_str(), String::new()),
        };
        let root = base.rsplit_once('/').map(|(r, _)| r).unwrap_or(base);
        let url = format!("{root}/{name}{query}");
        let raw = PgStore::connect(&url).unwrap();
        (
            url,
            Box::new(move |sql: &str| raw.execute_raw(sql).unwrap()),
        )
    }
}

fn pg() -> Option<Pg> {
    match std::env::var("MIDEUM_TEST_PG_URL") {
        Ok(url) if !url.is_empty() => Some(Pg { admin_url: url }),
        _ => {
            if std::env::var("MIDEUM_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("MIDEUM_REQUIRE_PG=1 but MIDEUM_TEST_PG_URL is not set: PostgreSQL tests cannot be skipped here");
            }
            eprintln!("NOTICE: MIDEUM_TEST_PG_URL is not set: skipping the PostgreSQL store tests");
            None
        }
    }
}

#[test]
fn postgres_tamper() {
    let Some(h) = pg() else { return };
    common::tamper_modify(&h);
    common::tamper_modify_link(&h);
    common::tamper_column(&h);
    common::tamper_delete(&h);
    common::tamper_reorder(&h);
    common::tamper_insert(&h);
}

#[test]
fn postgres_prune_export() {
    let Some(h) = pg() else { return };
    common::prune_and_anchor(&h);
    common::export_filters(&h);
}

#[test]
fn postgres_tenants_keys_limits() {
    let Some(h) = pg() else { return };
    common::tenants_keys_usage(&h);
    common::limits(&h);
}

#[test]
fn postgres_writers() {
    let Some(h) = pg() else { return };
    common::writer_group_commit(&h);
    common::two_writers_share_one_chain(&h);
}
