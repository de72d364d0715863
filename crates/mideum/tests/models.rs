//! `mideum pull/list/show/rm/import/export` and model references in the other commands, end
//! to end against the mock hub of mideum-hub's tests (127.0.0.1 only).

#[path = "../../mideum-hub/tests/mock/mod.rs"]
mod mock;

use mock::{MockHub, MockRepo};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn models() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/models")
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs mideum with its store in `cache` and the hub at `endpoint`; no token, not offline.
fn mideum(cache: &Path, endpoint: &str, args: &[&str], extra_env: &[(&str, &str)]) -> Out {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mideum"));
    c.args(args)
        .env("MIDEUM_LOG", "error")
        .env("HF_HUB_CACHE", cache)
        .env("HF_HOME", cache.join("home"))
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    for (k, v) in extra_env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let out = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        !out.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        out.stderr
    );
    out
}

fn ok(o: Out) -> Out {
    assert_eq!(o.code, 0, "stdout {} stderr {}", o.stdout, o.stderr);
    o
}

fn fails(o: Out, needle: &str) {
    assert_eq!(
        o.code, 1,
        "should fail; stdout {} stderr {}",
        o.stdout, o.stderr
    );
    assert!(
        o.stderr.contains(needle),
        "expected {needle:?} in {:?}",
        o.stderr
    );
}

const README: &str = "---\nlicense: mit\nlibrary_name: transformers\n---\n# Tiny Mi:dm\n";

#[test]
fn pull_list_show_generate_rm() {
    let r = MockRepo::new("K-intelligence/Midm-2.0-Mini-Instruct", 0x71)
        .dir(&models().join("tiny-mini"))
        .file("README.md", README.as_bytes().to_vec());
    let g = MockRepo::new("test-org/tiny-gguf", 0x72)
        .file(
            "tiny-mini.gguf",
            std::fs::read(models().join("tiny-mini.gguf")).unwrap(),
        )
        .file(
            "tiny-bf16.gguf",
            std::fs::read(models().join("tiny-bf16.gguf")).unwrap(),
        );
    let hub = MockHub::start(vec![r.clone(), g]);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path();
    let run = |args: &[&str]| mideum(cache, &hub.url, args, &[]);

    // Before the pull: offline use fails and says how to get the model.
    fails(
        mideum(
            cache,
            &hub.url,
            &["tokenize", "-m", "midm-mini", "--text", "x"],
            &[("HF_HUB_OFFLINE", "1")],
        ),
        "mideum pull K-intelligence/Midm-2.0-Mini-Instruct",
    );
    fails(
        run(&["generate", "--offline", "-m", "midm-mini", "-p", "x"]),
        "offline",
    );
    assert!(hub.requests().is_empty());

    let o = ok(run(&["pull", "midm-mini"]));
    let snap = PathBuf::from(o.stdout.trim());
    assert!(
        snap.ends_with(format!("snapshots/{}", r.commit)),
        "{}",
        o.stdout
    );
    assert!(snap.join("config.json").exists());

    let list: Value = serde_json::from_str(&ok(run(&["list", "--json"])).stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "K-intelligence/Midm-2.0-Mini-Instruct");
    assert_eq!(list[0]["revision"], "main");
    assert_eq!(list[0]["format"], "safetensors");
    let on_disk: u64 = std::fs::read_dir(models().join("tiny-mini"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>()
        + README.len() as u64;
    assert_eq!(list[0]["size"], on_disk);
    let table = ok(run(&["list"])).stdout;
    assert!(
        table.contains("K-intelligence/Midm-2.0-Mini-Instruct") && table.contains("safetensors"),
        "{table}"
    );

    let show: Value =
        serde_json::from_str(&ok(run(&["show", "midm-mini", "--json"])).stdout).unwrap();
    assert_eq!(show["architecture"], "LlamaForCausalLM");
    assert_eq!(show["license"], "mit");
    assert_eq!(show["chat_template"], true);
    assert!(show["chat_template_chars"].as_u64().unwrap() > 100);
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(models().join("tiny-mini/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(show["context_length"], cfg["max_position_embeddings"]);
    // Parameters from the safetensors shapes equal those of the GGUF conversion.
    let gshow: Value = serde_json::from_str(
        &ok(run(&[
            "show",
            models().join("tiny-mini.gguf").to_str().unwrap(),
            "--json",
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(show["parameters"], gshow["parameters"]);
    assert!(show["parameters"].as_u64().unwrap() > 100_000);
    assert_eq!(gshow["quantization"], "F32");
    assert_eq!(gshow["architecture"], "llama");
    let text = ok(run(&["show", "midm-mini"])).stdout;
    assert!(
        text.contains("chat template   yes") && text.contains("license         mit"),
        "{text}"
    );

    // The reference works in the other commands, offline, from the store.
    hub.clear();
    let gen: Value = serde_json::from_str(
        &ok(run(&[
            "generate",
            "--offline",
            "-m",
            "K-intelligence/Midm-2.0-Mini-Instruct",
            "-p",
            "안녕",
            "-n",
            "3",
            "--temperature",
            "0",
            "--json",
        ]))
        .stdout,
    )
    .unwrap();
    assert_eq!(gen["ids"].as_array().unwrap().len(), 3);
    ok(run(&[
        "tokenize",
        "-m",
        "midm-mini",
        "--text",
        "안녕하세요",
    ]));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // GGUF repos: one file must be chosen.
    fails(run(&["pull", "test-org/tiny-gguf"]), "--include");
    let o = ok(run(&["pull", "test-org/tiny-gguf", "--include", "*bf16*"]));
    assert!(o.stdout.trim().ends_with("tiny-bf16.gguf"), "{}", o.stdout);
    let list: Value = serde_json::from_str(&ok(run(&["list", "--json"])).stdout).unwrap();
    let gg = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "test-org/tiny-gguf")
        .unwrap();
    assert_eq!(gg["format"], "gguf");
    assert_eq!(gg["quantization"], "BF16");

    // Bad input.
    fails(run(&["pull", "not a repo"]), "invalid model reference");
    fails(run(&["pull", "org/x--y"]), "invalid model reference");
    fails(run(&["pull", "test-org/nothing"]), "not found");
    fails(run(&["pull", "midm-mini@v404"]), "revision \"v404\"");
    fails(run(&["pull", "midm-mini", "--endpoint", "ftp://x"]), "http");
    fails(
        run(&["run", "./no/such/dir", "-p", "x"]),
        "No such file or directory",
    );

    ok(run(&["rm", "midm-mini"]));
    ok(run(&["rm", "test-org/tiny-gguf"]));
    fails(run(&["rm", "midm-mini"]), "not in the store");
    let list: Value = serde_json::from_str(&ok(run(&["list", "--json"])).stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
}

#[test]
fn an_html_endpoint_is_a_clear_error() {
    let hub = MockHub::start(vec![]);
    hub.faults.lock().unwrap().html_info = true;
    let tmp = tempfile::tempdir().unwrap();
    fails(
        mideum(tmp.path(), &hub.url, &["pull", "org/model"], &[]),
        "HTML",
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        // Follow the store's symlinks, as `cp -rL` to a USB stick would.
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn export_then_import_on_an_air_gapped_machine() {
    let r = MockRepo::new("test-org/tiny-bf16", 0x81).dir(&models().join("tiny-bf16"));
    let hub = MockHub::start(vec![r.clone()]);
    let online = tempfile::tempdir().unwrap();
    let offline = tempfile::tempdir().unwrap();
    let media = tempfile::tempdir().unwrap();
    let snap = PathBuf::from(
        ok(mideum(online.path(), &hub.url, &["pull", &r.id], &[]))
            .stdout
            .trim(),
    );
    let manifest = media.path().join("manifest.json");
    ok(mideum(
        online.path(),
        &hub.url,
        &["export", &r.id, "--manifest", manifest.to_str().unwrap()],
        &[],
    ));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["repo"], "test-org/tiny-bf16");
    assert_eq!(m["revision"], r.commit);
    assert_eq!(m["files"].as_array().unwrap().len(), 9);
    let shard = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "model-00002-of-00003.safetensors")
        .unwrap();
    assert_eq!(
        shard["sha256"],
        mock::sha256_hex(&r.data("model-00002-of-00003.safetensors"))
    );
    assert_eq!(
        shard["size"],
        r.data("model-00002-of-00003.safetensors").len()
    );

    let copy = media.path().join("tiny-bf16");
    copy_dir(&snap, &copy);
    let dead = "http://127.0.0.1:9";
    let env = [("HF_HUB_OFFLINE", "1")];

    // A flipped byte on the media: refused, nothing registered.
    let shard_path = copy.join("model-00002-of-00003.safetensors");
    let good = std::fs::read(&shard_path).unwrap();
    let mut bad = good.clone();
    bad[1000] ^= 1;
    std::fs::write(&shard_path, &bad).unwrap();
    fails(
        mideum(
            offline.path(),
            dead,
            &[
                "import",
                copy.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
            ],
            &env,
        ),
        "model-00002-of-00003.safetensors: does not match the manifest: SHA-256",
    );
    let list: Value =
        serde_json::from_str(&ok(mideum(offline.path(), dead, &["list", "--json"], &env)).stdout)
            .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0);
    std::fs::write(&shard_path, &good).unwrap();
    // An extra file the manifest does not vouch for: refused too.
    std::fs::write(copy.join("extra.py"), b"print(1)").unwrap();
    fails(
        mideum(
            offline.path(),
            dead,
            &[
                "import",
                copy.to_str().unwrap(),
                "--manifest",
                manifest.to_str().unwrap(),
            ],
            &env,
        ),
        "extra.py: does not match the manifest: not listed",
    );
    std::fs::remove_file(copy.join("extra.py")).unwrap();
    // A malformed manifest.
    let junk = media.path().join("junk.json");
    std::fs::write(&junk, b"{\"files\": 3}").unwrap();
    fails(
        mideum(
            offline.path(),
            dead,
            &[
                "import",
                copy.to_str().unwrap(),
                "--manifest",
                junk.to_str().unwrap(),
            ],
            &env,
        ),
        "not a Mideum manifest",
    );

    let o = ok(mideum(
        offline.path(),
        dead,
        &[
            "import",
            copy.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
        ],
        &env,
    ));
    let imported = PathBuf::from(o.stdout.trim());
    assert!(
        imported.ends_with(format!(
            "models--test-org--tiny-bf16/snapshots/{}",
            r.commit
        )),
        "{}",
        o.stdout
    );
    // Now usable by reference, offline, and the same bytes as the hub's.
    let gen = ok(mideum(
        offline.path(),
        dead,
        &[
            "generate",
            "-m",
            &r.id,
            "-p",
            "안녕",
            "-n",
            "2",
            "--json",
            "--temperature",
            "0",
        ],
        &env,
    ));
    assert!(gen.stdout.contains("\"ids\""));
    let again = media.path().join("again.json");
    ok(mideum(
        offline.path(),
        dead,
        &["export", &r.id, "--manifest", again.to_str().unwrap()],
        &env,
    ));
    let m2: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(m["files"], m2["files"]);

    // A single GGUF without a manifest, under a chosen name.
    let o = ok(mideum(
        offline.path(),
        dead,
        &[
            "import",
            models().join("tiny-f16-linear.gguf").to_str().unwrap(),
            "--name",
            "local/tiny-f16",
        ],
        &env,
    ));
    assert!(
        o.stdout.trim().ends_with("tiny-f16-linear.gguf"),
        "{}",
        o.stdout
    );
    ok(mideum(
        offline.path(),
        dead,
        &["tokenize", "-m", "local/tiny-f16", "--text", "hi"],
        &env,
    ));
}

#[test]
fn proxies_from_the_environment_are_used_and_tokens_stay_out_of_logs() {
    let mut r = MockRepo::new("test-org/private", 0x82).dir(&models().join("tiny-f16-linear"));
    r.token = Some("hf_sekrit_token_123".into());
    let hub = MockHub::start(vec![r.clone()]);
    let tmp = tempfile::tempdir().unwrap();
    // The endpoint's host does not exist: only the proxy (our mock) can answer.
    let o = ok(mideum(
        tmp.path(),
        "http://hub.mideum-test.invalid",
        &["pull", &r.id],
        &[
            ("HTTP_PROXY", hub.url.as_str()),
            ("NO_PROXY", "localhost"),
            ("HF_TOKEN", "hf_sekrit_token_123"),
            ("MIDEUM_LOG", "trace"),
        ],
    ));
    assert!(PathBuf::from(o.stdout.trim()).join("config.json").exists());
    let reqs = hub.requests();
    assert!(!reqs.is_empty());
    assert!(
        reqs.iter().all(|q| q
            .proxied_to
            .as_deref()
            .is_some_and(|h| h.starts_with("hub.mideum-test.invalid"))),
        "{reqs:?}"
    );
    assert!(reqs
        .iter()
        .any(|q| q.auth.as_deref() == Some("Bearer hf_sekrit_token_123")));
    assert!(
        !o.stderr.contains("hf_sekrit"),
        "the token leaked into the logs: {}",
        o.stderr
    );
    assert!(
        o.stderr.contains("GET"),
        "trace logs expected: {}",
        o.stderr
    );

    // Without the token: 401 with a hint, and no token in the message.
    let tmp2 = tempfile::tempdir().unwrap();
    fails(
        mideum(tmp2.path(), &hub.url, &["pull", &r.id], &[]),
        "HF_TOKEN",
    );
}
