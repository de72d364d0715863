//! The store is huggingface_hub's cache: a layout written by the `huggingface_hub` Python
//! package's own functions is found and loaded without downloading, and what Mideum pulls is
//! seen by huggingface_hub's cache scanner. Skipped (with a note) when Python or
//! huggingface_hub is not installed.

mod mock;

use mideum_hub::*;
use mock::{MockHub, MockRepo};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models")
}

fn python(script: &str, args: &[&str]) -> Option<String> {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .ok()?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        if err.contains("No module named 'huggingface_hub'") {
            return None;
        }
        panic!("python failed: {err}");
    }
    Some(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn have_hf() -> bool {
    let ok = python("import huggingface_hub", &[]).is_some();
    if !ok {
        eprintln!("huggingface_hub is not installed: skipping the cache compatibility test");
    }
    ok
}

/// Lays out `src` as huggingface_hub would after downloading it: blobs named like the hub's
/// ETags (LFS sha256, else the git blob id), symlinks made by `_create_symlink`, the ref by
/// `_cache_commit_hash_for_specific_revision`.
const WRITE_LAYOUT: &str = r#"
import hashlib, os, shutil, sys
from huggingface_hub.file_download import repo_folder_name, _create_symlink, _cache_commit_hash_for_specific_revision
cache, repo_id, commit, src = sys.argv[1:5]
storage = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type="model"))
for name in sorted(os.listdir(src)):
    data = open(os.path.join(src, name), "rb").read()
    if name.endswith(".safetensors"):
        etag = hashlib.sha256(data).hexdigest()
    else:
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    blob = os.path.join(storage, "blobs", etag)
    os.makedirs(os.path.dirname(blob), exist_ok=True)
    shutil.copyfile(os.path.join(src, name), blob)
    pointer = os.path.join(storage, "snapshots", commit, name)
    os.makedirs(os.path.dirname(pointer), exist_ok=True)  # as hf_hub_download does
    _create_symlink(blob, pointer, new_blob=True)
_cache_commit_hash_for_specific_revision(storage, "main", commit)
"#;

const SCAN: &str = r#"
import json, sys
from huggingface_hub import scan_cache_dir, try_to_load_from_cache
cache, repo_id = sys.argv[1:3]
info = scan_cache_dir(cache)
out = {"warnings": [str(w) for w in info.warnings], "repos": []}
for r in info.repos:
    out["repos"].append({
        "repo_id": r.repo_id,
        "revisions": [{"commit": v.commit_hash, "refs": sorted(v.refs), "files": sorted(f.file_name for f in v.files)} for v in r.revisions],
    })
out["config"] = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
print(json.dumps(out))
"#;

#[test]
fn a_cache_written_by_huggingface_hub_is_used_without_downloading() {
    if !have_hf() {
        return;
    }
    let r = MockRepo::new("test-org/tiny-mini", 0x91).dir(&models().join("tiny-mini"));
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path();
    python(
        WRITE_LAYOUT,
        &[
            cache.to_str().unwrap(),
            &r.id,
            &r.commit,
            models().join("tiny-mini").to_str().unwrap(),
        ],
    )
    .unwrap();

    let opts = ResolveOptions {
        offline: true,
        store: Some(cache.into()),
        ..Default::default()
    };
    let path = resolve(&r.id, &opts).unwrap();
    assert_eq!(
        path,
        cache
            .join("models--test-org--tiny-mini/snapshots")
            .join(&r.commit)
    );
    mideum_model::LoadedModel::load(
        &path,
        &mideum_model::LoadOptions {
            threads: 1,
            ctx_size: Some(32),
        },
    )
    .unwrap();

    // A pull of the same commit finds every blob and downloads nothing.
    let hub = MockHub::start(vec![r.clone()]);
    let client = HubClient::new(&ClientOptions {
        endpoint: Some(hub.url.clone()),
        token: None,
        read_timeout: Some(Duration::from_secs(10)),
    })
    .unwrap();
    let p = pull(
        &Store::at(cache),
        &client,
        &RepoId::parse(&r.id).unwrap(),
        &PullOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(p.downloaded, 0);
    assert!(
        hub.requests().iter().all(|q| q.path.starts_with("/api/")),
        "{:?}",
        hub.requests()
    );
}

#[test]
fn what_mideum_pulls_is_seen_by_huggingface_hub() {
    if !have_hf() {
        return;
    }
    let r = MockRepo::new("test-org/tiny-bf16", 0x92).dir(&models().join("tiny-bf16"));
    let hub = MockHub::start(vec![r.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let cache: &Path = tmp.path();
    let client = HubClient::new(&ClientOptions {
        endpoint: Some(hub.url.clone()),
        token: None,
        read_timeout: Some(Duration::from_secs(10)),
    })
    .unwrap();
    let p = pull(
        &Store::at(cache),
        &client,
        &RepoId::parse(&r.id).unwrap(),
        &PullOptions::default(),
        &NoProgress,
    )
    .unwrap();
    let out = python(SCAN, &[cache.to_str().unwrap(), &r.id]).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    assert_eq!(v["repos"][0]["repo_id"], r.id);
    let rev = &v["repos"][0]["revisions"][0];
    assert_eq!(rev["commit"], r.commit);
    assert_eq!(rev["refs"], serde_json::json!(["main"]));
    assert_eq!(rev["files"].as_array().unwrap().len(), p.files.len());
    assert_eq!(
        v["config"].as_str().map(PathBuf::from),
        Some(p.snapshot.join("config.json"))
    );
}
