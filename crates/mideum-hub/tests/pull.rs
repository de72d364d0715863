//! Pulls against a local imitation of the hub (tests/mock): layout, resume, verification,
//! errors, slow servers, concurrent pulls, references, and loading what was pulled.

mod mock;

use mideum_hub::*;
use mock::{sha256_hex, MockHub, MockRepo};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models")
}

const README: &str = "---\nlicense: mit\nlanguage: [ko, en]\n---\n# tiny\n";

fn bf16_repo() -> MockRepo {
    MockRepo::new("test-org/tiny-bf16", 0xab)
        .dir(&models().join("tiny-bf16"))
        .file("README.md", README.as_bytes().to_vec())
        .file(".gitattributes", b"*.safetensors filter=lfs\n".to_vec())
        .file("pytorch_model.bin", vec![7u8; 1000])
}

fn client(hub: &MockHub) -> HubClient {
    client_with(hub, None)
}

fn client_with(hub: &MockHub, token: Option<&str>) -> HubClient {
    HubClient::new(&ClientOptions {
        endpoint: Some(hub.url.clone()),
        token: token.map(str::to_string),
        read_timeout: Some(Duration::from_secs(10)),
    })
    .unwrap()
}

fn fast() -> PullOptions {
    PullOptions {
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    }
}

fn repo(id: &str) -> RepoId {
    RepoId::parse(id).unwrap()
}

/// Every file of the snapshot equals the served one, and no partial file is left.
fn check_snapshot(store: &Store, r: &MockRepo, commit: &str, files: &[&str]) {
    let snap = store.snapshot_dir(&repo(&r.id), commit);
    for f in files {
        let got = std::fs::read(snap.join(f)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&r.data(f)), "{f}");
    }
    let blobs = store.repo_dir(&repo(&r.id)).join("blobs");
    for e in std::fs::read_dir(blobs).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(!n.ends_with(".incomplete"), "left over: {n}");
    }
}

fn load(path: &Path) {
    let m = mideum_model::LoadedModel::load(
        path,
        &mideum_model::LoadOptions {
            threads: 1,
            ctx_size: Some(64),
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ids = m.tokenizer.encode("안녕하세요", true).unwrap();
    let mut cache = m.new_cache();
    let logits = m
        .model
        .forward(&ids, &mut cache, mideum_model::Logits::Last)
        .unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn pull_lays_out_the_hf_cache_and_the_result_loads() {
    let r = bf16_repo();
    let hub = MockHub::start(vec![r.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let p = pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    assert_eq!(p.commit, r.commit);
    let mut files = p.files.clone();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "config.json",
            "generation_config.json",
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "model.safetensors.index.json",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let fl: Vec<&str> = files.iter().map(String::as_str).collect();
    check_snapshot(&store, &r, &r.commit, &fl);
    // huggingface_hub's layout: refs/main holds the commit, snapshot files are relative
    // symlinks into blobs named by LFS sha256 or git blob id.
    let dir = tmp.path().join("models--test-org--tiny-bf16");
    assert_eq!(
        std::fs::read_to_string(dir.join("refs/main")).unwrap(),
        r.commit
    );
    let snap = dir.join("snapshots").join(&r.commit);
    let shard = "model-00001-of-00003.safetensors";
    assert_eq!(
        std::fs::read_link(snap.join(shard)).unwrap(),
        PathBuf::from(format!("../../blobs/{}", sha256_hex(&r.data(shard))))
    );
    assert_eq!(
        std::fs::read_link(snap.join("config.json")).unwrap(),
        PathBuf::from(format!(
            "../../blobs/{}",
            mock::git_blob_id(&r.data("config.json"))
        ))
    );
    assert!(!snap.join("pytorch_model.bin").exists());
    assert!(!snap.join(".gitattributes").exists());
    // LFS files came through the redirect to the CDN path.
    assert_eq!(hub.count(|q| q.path.starts_with("/cdn/")), 3);
    assert_eq!(p.model_path, snap);
    load(&p.model_path);

    // A second pull downloads nothing.
    hub.clear();
    let again = pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    assert_eq!(again.downloaded, 0);
    assert!(
        hub.requests().iter().all(|q| q.path.starts_with("/api/")),
        "{:?}",
        hub.requests()
    );

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].refs, ["main"]);
    assert_eq!(listed[0].files.len(), 10);

    // Found offline by reference afterwards.
    let got = resolve(
        &format!("{}@main", r.id),
        &ResolveOptions {
            offline: true,
            store: Some(tmp.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(got, snap);
}

#[test]
fn an_interrupted_download_resumes_without_refetching_what_it_has() {
    let r = MockRepo::new("test-org/tiny-mini", 0x11).dir(&models().join("tiny-mini"));
    let hub = MockHub::start(vec![r.clone()]);
    let weights = "model.safetensors";
    let cut = 300_000u64;
    hub.faults
        .lock()
        .unwrap()
        .cut_after
        .insert(weights.into(), (cut, 1));
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let once = PullOptions {
        attempts: 1,
        ..fast()
    };
    let e = pull(&store, &client(&hub), &repo(&r.id), &once, &NoProgress).unwrap_err();
    assert!(matches!(e, HubError::Network { .. }), "{e}");
    // The partial bytes are kept under .incomplete; nothing is visible under a final name.
    let sha = sha256_hex(&r.data(weights));
    let partial = store.incomplete_path(&repo(&r.id), &sha);
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut);
    assert!(!store.blob_path(&repo(&r.id), &sha).exists());
    assert!(
        std::fs::symlink_metadata(store.snapshot_dir(&repo(&r.id), &r.commit).join(weights))
            .is_err()
    );

    hub.clear();
    let p = pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    let cdn: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/cdn/"))
        .collect();
    assert_eq!(cdn.len(), 1, "{cdn:?}");
    assert_eq!(
        cdn[0].range.as_deref(),
        Some(format!("bytes={cut}-").as_str())
    );
    check_snapshot(&store, &r, &r.commit, &[weights, "config.json"]);
    load(&p.model_path);
}

#[test]
fn a_dropped_connection_is_resumed_within_the_same_pull() {
    let r = MockRepo::new("test-org/tiny-mini", 0x12).dir(&models().join("tiny-mini"));
    let hub = MockHub::start(vec![r.clone()]);
    hub.faults
        .lock()
        .unwrap()
        .cut_after
        .insert("model.safetensors".into(), (123_457, 1));
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    let ranges: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|q| q.path.starts_with("/cdn/"))
        .map(|q| q.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=123457-".to_string())]);
    check_snapshot(&store, &r, &r.commit, &["model.safetensors"]);
}

#[test]
fn a_corrupted_byte_is_caught_by_the_hash_and_downloaded_again() {
    let r = MockRepo::new("test-org/tiny-mini", 0x13).dir(&models().join("tiny-mini"));
    let hub = MockHub::start(vec![r.clone()]);
    hub.faults
        .lock()
        .unwrap()
        .corrupt
        .insert("model.safetensors".into(), 1);
    // A small (non-LFS) file is checked against its git blob id.
    hub.faults
        .lock()
        .unwrap()
        .corrupt
        .insert("tokenizer.json".into(), 1);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let p = pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    assert_eq!(hub.count(|q| q.path.starts_with("/cdn/")), 2);
    assert_eq!(hub.count(|q| q.path.ends_with("/tokenizer.json")), 2);
    check_snapshot(
        &store,
        &r,
        &r.commit,
        &["model.safetensors", "tokenizer.json"],
    );
    load(&p.model_path);

    // Always corrupted: a clear error and nothing under the final name.
    let r2 = MockRepo::new("test-org/bad", 0x14).dir(&models().join("tiny-mini"));
    let hub2 = MockHub::start(vec![r2.clone()]);
    hub2.faults
        .lock()
        .unwrap()
        .corrupt
        .insert("model.safetensors".into(), 100);
    let opts = PullOptions {
        attempts: 3,
        ..fast()
    };
    let e = pull(&store, &client(&hub2), &repo(&r2.id), &opts, &NoProgress).unwrap_err();
    assert!(
        matches!(e, HubError::HashMismatch { attempts: 3, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("SHA-256 mismatch"), "{e}");
    let sha = sha256_hex(&r2.data("model.safetensors"));
    assert!(!store.blob_path(&repo(&r2.id), &sha).exists());
    assert!(std::fs::symlink_metadata(
        store
            .snapshot_dir(&repo(&r2.id), &r2.commit)
            .join("model.safetensors")
    )
    .is_err());
}

#[test]
fn not_found_unauthorized_gated_and_html_give_clear_errors() {
    let mut private =
        MockRepo::new("test-org/private", 0x21).dir(&models().join("tiny-f16-linear"));
    private.token = Some("hf_right".into());
    let mut gated = MockRepo::new("test-org/gated", 0x22).dir(&models().join("tiny-f16-linear"));
    gated.gated = true;
    let mut broken = MockRepo::new("test-org/broken", 0x23).dir(&models().join("tiny-f16-linear"));
    broken
        .files
        .iter_mut()
        .find(|f| f.name == "tokenizer.json")
        .unwrap()
        .missing = true;
    let hub = MockHub::start(vec![private.clone(), gated, broken]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let go = |id: &str, token: Option<&str>, rev: Option<&str>| {
        let opts = PullOptions {
            revision: rev.map(str::to_string),
            ..fast()
        };
        pull(
            &store,
            &client_with(&hub, token),
            &repo(id),
            &opts,
            &NoProgress,
        )
    };
    let e = go("test-org/nothing", None, None).unwrap_err();
    assert!(matches!(e, HubError::RepoNotFound { .. }), "{e}");
    assert!(e.to_string().contains("test-org/nothing not found"), "{e}");
    let e = go("test-org/private", None, Some("v9")).unwrap_err();
    assert!(
        matches!(
            e,
            HubError::Unauthorized {
                token_sent: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("HF_TOKEN"), "{e}");
    let e = go("test-org/private", Some("hf_wrong"), None).unwrap_err();
    assert!(
        matches!(
            e,
            HubError::Unauthorized {
                token_sent: true,
                ..
            }
        ),
        "{e}"
    );
    assert!(
        !e.to_string().contains("hf_wrong"),
        "the token must not be shown: {e}"
    );
    let e = go("test-org/private", Some("hf_right"), Some("v9")).unwrap_err();
    assert!(matches!(e, HubError::RevisionNotFound { .. }), "{e}");
    let e = go("test-org/gated", Some("hf_right"), None).unwrap_err();
    assert!(matches!(e, HubError::Forbidden { .. }), "{e}");
    assert!(e.to_string().contains("gated"), "{e}");
    let e = go("test-org/broken", None, None).unwrap_err();
    assert!(
        matches!(e, HubError::EntryNotFound { ref file, .. } if file == "tokenizer.json"),
        "{e}"
    );
    // With the right token the private repo pulls, and the token went along.
    let p = go("test-org/private", Some("hf_right"), None).unwrap();
    assert!(hub
        .requests()
        .iter()
        .any(|q| q.auth.as_deref() == Some("Bearer hf_right")));
    load(&p.model_path);

    hub.faults.lock().unwrap().html_info = true;
    let e = go("test-org/private", Some("hf_right"), None).unwrap_err();
    assert!(matches!(e, HubError::BadResponse { .. }), "{e}");
    assert!(e.to_string().contains("HTML"), "{e}");

    // Nothing listening: a network error naming the address.
    let dead = HubClient::new(&ClientOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..Default::default()
    })
    .unwrap();
    let e = pull(&store, &dead, &repo("a/b"), &fast(), &NoProgress).unwrap_err();
    assert!(matches!(e, HubError::Network { .. }), "{e}");
}

/// Records every progress call.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<(String, String, u64)>>,
}

impl Progress for Recorder {
    fn file_begin(&self, file: &str, _size: Option<u64>, done: u64) {
        self.events
            .lock()
            .unwrap()
            .push(("begin".into(), file.into(), done));
    }
    fn file_progress(&self, file: &str, done: u64) {
        self.events
            .lock()
            .unwrap()
            .push(("progress".into(), file.into(), done));
    }
    fn file_end(&self, file: &str) {
        self.events
            .lock()
            .unwrap()
            .push(("end".into(), file.into(), 0));
    }
}

#[test]
fn progress_keeps_updating_while_a_slow_server_trickles_bytes() {
    let r = MockRepo::new("test-org/slow", 0x31)
        .file(
            "model.safetensors",
            (0..60_000u32).map(|i| (i % 251) as u8).collect(),
        )
        .file("config.json", b"{}".to_vec());
    let hub = MockHub::start(vec![r.clone()]);
    hub.faults.lock().unwrap().slow.insert(
        "model.safetensors".into(),
        (3000, Duration::from_millis(15)),
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let rec = Recorder::default();
    pull(&store, &client(&hub), &repo(&r.id), &fast(), &rec).unwrap();
    let ev = rec.events.lock().unwrap();
    let steps: Vec<u64> = ev
        .iter()
        .filter(|(k, f, _)| k == "progress" && f == "model.safetensors")
        .map(|(_, _, d)| *d)
        .collect();
    assert!(steps.len() >= 10, "only {} progress updates", steps.len());
    assert!(steps.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*steps.last().unwrap(), 60_000);
    let end = ev
        .iter()
        .position(|(k, f, _)| k == "end" && f == "model.safetensors")
        .unwrap();
    let last_progress = ev
        .iter()
        .rposition(|(k, f, _)| k == "progress" && f == "model.safetensors")
        .unwrap();
    assert!(last_progress < end);
}

#[test]
fn two_pulls_of_the_same_model_at_once_do_not_corrupt_anything() {
    let r = bf16_repo();
    let hub = MockHub::start(vec![r.clone()]);
    hub.faults.lock().unwrap().cdn_delay = Some(Duration::from_millis(100));
    let tmp = tempfile::tempdir().unwrap();
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let store = Store::at(tmp.path());
                    pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for p in &results {
        assert!(p.is_ok(), "{:?}", p.as_ref().err().map(|e| e.to_string()));
    }
    let store = Store::at(tmp.path());
    check_snapshot(
        &store,
        &r,
        &r.commit,
        &[
            "model-00001-of-00003.safetensors",
            "model-00002-of-00003.safetensors",
            "model-00003-of-00003.safetensors",
            "config.json",
            "tokenizer.json",
        ],
    );
    // Each LFS blob crossed the network once: the second pull waited on the lock.
    assert_eq!(hub.count(|q| q.path.starts_with("/cdn/")), 3);
    load(&results[0].as_ref().unwrap().model_path);
}

#[test]
fn gguf_repos_pull_the_chosen_file() {
    let r = MockRepo::new("test-org/tiny-gguf", 0x41)
        .file(
            "tiny-mini.gguf",
            std::fs::read(models().join("tiny-mini.gguf")).unwrap(),
        )
        .file(
            "tiny-bf16.gguf",
            std::fs::read(models().join("tiny-bf16.gguf")).unwrap(),
        )
        .file("README.md", README.as_bytes().to_vec());
    let hub = MockHub::start(vec![r.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    let e = pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap_err();
    assert!(matches!(e, HubError::AmbiguousGguf { .. }), "{e}");
    assert!(
        e.to_string().contains("tiny-bf16.gguf, tiny-mini.gguf")
            || e.to_string().contains("tiny-mini.gguf, tiny-bf16.gguf"),
        "{e}"
    );
    let opts = PullOptions {
        include: vec!["*bf16*".into()],
        ..fast()
    };
    let p = pull(&store, &client(&hub), &repo(&r.id), &opts, &NoProgress).unwrap();
    assert_eq!(p.files, ["tiny-bf16.gguf", "README.md"]);
    assert!(p.model_path.ends_with("tiny-bf16.gguf"));
    load(&p.model_path);
    let got = resolve(
        &r.id,
        &ResolveOptions {
            offline: true,
            store: Some(tmp.path().into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(got, p.model_path);
}

#[test]
fn references_resolve_paths_aliases_and_pull_on_first_use() {
    let r = MockRepo::new("K-intelligence/Midm-2.0-Mini-Instruct", 0x51)
        .dir(&models().join("tiny-mini"));
    let hub = MockHub::start(vec![r.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let opts = |offline| ResolveOptions {
        offline,
        endpoint: Some(hub.url.clone()),
        store: Some(tmp.path().into()),
        progress: false,
    };
    // Local paths are used as they are.
    let local = models().join("tiny-mini");
    assert_eq!(
        resolve(local.to_str().unwrap(), &opts(true)).unwrap(),
        local
    );
    let e = resolve("/no/such/model.gguf", &opts(true)).unwrap_err();
    assert!(matches!(e, HubError::NoSuchPath { .. }), "{e}");
    let e = resolve("./missing-dir", &opts(true)).unwrap_err();
    assert!(matches!(e, HubError::NoSuchPath { .. }), "{e}");
    let e = resolve("bad/name/x@", &opts(true)).unwrap_err();
    assert!(
        matches!(
            e,
            HubError::NoSuchPath { .. } | HubError::InvalidReference { .. }
        ),
        "{e}"
    );
    let e = resolve("org/na me", &opts(true)).unwrap_err();
    assert!(matches!(e, HubError::InvalidReference { .. }), "{e}");
    // Offline and not in the store: says how to pull.
    let e = resolve("midm-mini", &opts(true)).unwrap_err();
    assert!(matches!(e, HubError::OfflineNotInStore { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("mideum pull K-intelligence/Midm-2.0-Mini-Instruct"),
        "{e}"
    );
    assert!(hub.requests().is_empty());
    // Online: pulled on first use, then found without the network.
    let p = resolve("midm-mini", &opts(false)).unwrap();
    assert!(p.ends_with(format!("snapshots/{}", r.commit)));
    load(&p);
    hub.clear();
    assert_eq!(
        resolve("K-intelligence/Midm-2.0-Mini-Instruct", &opts(false)).unwrap(),
        p
    );
    assert_eq!(
        resolve(&format!("midm-mini@{}", r.commit), &opts(true)).unwrap(),
        p
    );
    assert!(hub.requests().is_empty());
}

#[test]
fn remove_deletes_a_model_and_keeps_others() {
    let a = MockRepo::new("test-org/a", 0x61).dir(&models().join("tiny-f16-linear"));
    let b = MockRepo::new("test-org/b", 0x62).dir(&models().join("tiny-yarn"));
    let hub = MockHub::start(vec![a.clone(), b.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    for r in [&a, &b] {
        pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    }
    assert_eq!(store.list().unwrap().len(), 2);
    let freed = store.remove(&repo(&a.id), None).unwrap();
    assert!(freed > 170_000, "{freed}");
    let left = store.list().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].repo.to_string(), b.id);
    assert!(store.remove(&repo(&a.id), None).is_err());
    load(&left[0].snapshot);
}

#[test]
fn removing_one_revision_keeps_the_blobs_another_still_uses() {
    let dir = models().join("tiny-f16-linear");
    let old = MockRepo::new("test-org/evolving", 0x71).dir(&dir);
    let mut new = MockRepo::new("test-org/evolving", 0x72).dir(&dir);
    new.files.retain(|f| f.name != "generation_config.json");
    new = new.file("generation_config.json", b"{\"do_sample\": false}".to_vec());
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::at(tmp.path());
    for r in [&old, &new] {
        let hub = MockHub::start(vec![r.clone()]);
        pull(&store, &client(&hub), &repo(&r.id), &fast(), &NoProgress).unwrap();
    }
    let snaps = store.snapshots(&repo(&old.id)).unwrap();
    assert_eq!(snaps.len(), 2);
    // refs/main moved to the newer commit.
    assert_eq!(
        store.read_ref(&repo(&old.id), "main").as_deref(),
        Some(new.commit.as_str())
    );
    let freed = store.remove(&repo(&old.id), Some(&old.commit)).unwrap();
    assert_eq!(freed, old.data("generation_config.json").len() as u64);
    let left = store.snapshots(&repo(&old.id)).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].commit, new.commit);
    assert_eq!(left[0].refs, ["main"]);
    load(&left[0].snapshot);
}
