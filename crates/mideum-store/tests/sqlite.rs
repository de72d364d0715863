//! The store scenarios on embedded SQLite, each in its own temporary file.

mod common;

use common::{Harness, Raw};
use mideum_store::SqliteStore;

struct Sqlite(tempfile::TempDir, std::cell::Cell<u32>);

impl Harness for Sqlite {
    fn fresh(&self) -> (String, Raw) {
        let n = self.1.get() + 1;
        self.1.set(n);
        let path = self.0.path().join(format!("store-{n}.db"));
        let url = format!("sqlite:{}", path.display());
        let raw = SqliteStore::open(&path).unwrap();
        (
            url,
            Box::new(move |sql: &str| raw.execute_raw(sql).unwrap()),
        )
    }
}

fn h() -> Sqlite {
    Sqlite(tempfile::tempdir().unwrap(), Default::default())
}

#[test]
fn tamper_modify() {
    common::tamper_modify(&h());
    common::tamper_modify_link(&h());
    common::tamper_column(&h());
}

#[test]
fn tamper_delete() {
    common::tamper_delete(&h());
}

#[test]
fn tamper_reorder() {
    common::tamper_reorder(&h());
}

#[test]
fn tamper_insert() {
    common::tamper_insert(&h());
}

#[test]
fn prune_and_anchor() {
    common::prune_and_anchor(&h());
}

#[test]
fn export_filters() {
    common::export_filters(&h());
}

#[test]
fn tenants_keys_usage() {
    common::tenants_keys_usage(&h());
}

#[test]
fn limits() {
    common::limits(&h());
}

#[test]
fn writer_group_commit() {
    common::writer_group_commit(&h());
    common::two_writers_share_one_chain(&h());
}

#[test]
fn bad_store_urls_are_errors() {
    assert!(mideum_store::open("sqlite:").is_err());
    assert!(mideum_store::open("sqlite:/nonexistent-dir/x/y.db").is_err());
    assert!(mideum_store::open("postgres://nobody@127.0.0.1:1/none").is_err());
}
