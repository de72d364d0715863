//! The `mideum` binary end to end: JSON outputs equal the transformers goldens, and bad input
//! of every kind ends in a clear message and a non-zero exit, never a panic.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn model(rel: &str) -> String {
    testdata()
        .join("models")
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn mideum(args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_mideum"))
        .args(args)
        .env("MIDEUM_LOG", "error")
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Asserts a clean failure: exit code 1, the expected words, and no panic.
fn fails_with(args: &[&str], needle: &str) {
    let o = mideum(args);
    assert_eq!(
        o.code, 1,
        "{args:?} should fail; stdout {} stderr {}",
        o.stdout, o.stderr
    );
    assert!(
        o.stderr.contains(needle),
        "{args:?}: expected {needle:?} in {:?}",
        o.stderr
    );
    assert!(
        !o.stderr.contains("panicked"),
        "{args:?} panicked: {}",
        o.stderr
    );
}

fn json_out(args: &[&str]) -> Value {
    let o = mideum(args);
    assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    serde_json::from_str(o.stdout.trim())
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", o.stdout))
}

fn golden(name: &str) -> Value {
    serde_json::from_slice(
        &std::fs::read(testdata().join("golden").join(format!("{name}.json"))).unwrap(),
    )
    .unwrap()
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

#[test]
fn tokenize_detokenize_render_match_goldens() {
    let g = golden("tokenizer");
    for rel in ["tiny-mini", "tiny-f16-linear.gguf"] {
        for case in g["tokenize"].as_array().unwrap().iter().take(8) {
            let text = case["text"].as_str().unwrap();
            let v = json_out(&["tokenize", "-m", &model(rel), "--text", text, "--json"]);
            assert_eq!(v["ids"], case["ids"], "{rel} {text:?}");
        }
        let case = &g["decode"][0];
        let ids: Vec<String> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.to_string())
            .collect();
        let v = json_out(&[
            "detokenize",
            "-m",
            &model(rel),
            "--ids",
            &ids.join(","),
            "--json",
        ]);
        assert_eq!(v["text"], case["text"]);
    }
    // render uses the real clock, so compare everything but the date line.
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in g["render"].as_array().unwrap().iter().enumerate() {
        let msgs = dir.path().join(format!("m{i}.json"));
        std::fs::write(&msgs, case["messages"].to_string()).unwrap();
        let mut args = vec![
            "render".to_string(),
            "-m".into(),
            model("tiny-mini"),
            "--messages".into(),
            msgs.to_string_lossy().into(),
        ];
        if let Some(t) = case.get("tools").filter(|t| !t.is_null()) {
            let tp = dir.path().join(format!("t{i}.json"));
            std::fs::write(&tp, t.to_string()).unwrap();
            args.extend(["--tools".into(), tp.to_string_lossy().into()]);
        }
        if case["add_generation_prompt"] == Value::Bool(false) {
            args.push("--no-generation-prompt".into());
        }
        let o = mideum(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.code, 0, "{}", o.stderr);
        let want = case["prompt"].as_str().unwrap();
        let strip = |s: &str| {
            s.lines()
                .filter(|l| !l.contains("2026") && !l.contains("날짜"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(strip(&o.stdout), strip(want), "render case {i}");
    }
}

#[test]
fn generate_and_perplexity_json() {
    let g = golden("tiny-mini");
    let tg = golden("tokenizer");
    let text = tg["tokenize"][0]["text"].as_str().unwrap();
    let v = json_out(&[
        "generate",
        "-m",
        &model("tiny-mini"),
        "-p",
        text,
        "-n",
        "5",
        "--temperature",
        "0",
        "--json",
        "--ignore-eos",
    ]);
    let mut want_prompt = vec![Value::from(0)];
    want_prompt.extend(tg["tokenize"][0]["ids"].as_array().unwrap().iter().cloned());
    assert_eq!(v["prompt_ids"], Value::Array(want_prompt));
    assert_eq!(v["ids"].as_array().unwrap().len(), 5);

    let seq = &g["logprobs"][0];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ids.json");
    std::fs::write(&f, seq["ids"].to_string()).unwrap();
    let v = json_out(&[
        "perplexity",
        "-m",
        &model("tiny-mini.gguf"),
        "--ids-file",
        f.to_str().unwrap(),
        "--json",
    ]);
    let got = v["logprobs"].as_array().unwrap();
    let want = seq["logprobs"].as_array().unwrap();
    assert_eq!(got.len(), want.len());
    for (a, b) in got.iter().zip(want) {
        assert!((a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-4);
    }
    let nll = -want.iter().map(|x| x.as_f64().unwrap()).sum::<f64>() / want.len() as f64;
    assert!((v["ppl"].as_f64().unwrap() - nll.exp()).abs() < 1e-3 * nll.exp());
}

/// `--kv-type q8_0` reaches the model: the scores move (a lossy cache) but stay within the
/// bound the golden tests hold the q8_0 cache to; an unknown type lists the valid ones.
#[test]
fn perplexity_with_a_q8_kv_cache() {
    let seq = &golden("tiny-mini")["logprobs"][0];
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ids.json");
    std::fs::write(&f, seq["ids"].to_string()).unwrap();
    let m = model("tiny-mini.gguf");
    let args = |t: &'static str| {
        [
            "perplexity",
            "-m",
            &m,
            "--ids-file",
            f.to_str().unwrap(),
            "--json",
            "--kv-type",
            t,
        ]
        .map(String::from)
    };
    let run = |t: &'static str| {
        let a = args(t);
        json_out(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (f32s, q8s) = (run("f32"), run("q8_0"));
    let lp = |v: &Value| -> Vec<f64> {
        v["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (lp(&f32s), lp(&q8s));
    assert_eq!(a.len(), b.len());
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(worst > 0.0 && worst < 0.6, "max |Δlogprob| {worst}");
    let bad = args("q4_0");
    fails_with(
        &bad.iter().map(String::as_str).collect::<Vec<_>>(),
        "f16, f32, q8_0",
    );
}

#[test]
fn run_one_prompt_json() {
    let v = json_out(&[
        "run",
        &model("tiny-bf16"),
        "-p",
        "안녕하세요",
        "-n",
        "4",
        "--temperature",
        "0",
        "--json",
    ]);
    let ids = v["prompt_ids"].as_array().unwrap();
    assert_eq!(
        ids.iter().filter(|x| x.as_u64() == Some(0)).count(),
        1,
        "exactly one BOS in a chat prompt"
    );
    assert_eq!(
        ids[ids.len() - 1],
        Value::from(201),
        "ends with the assistant header and blank line"
    );
}

#[test]
fn bad_model_directories() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_with(
        &["generate", "-m", "/no/such/model", "-p", "x"],
        "No such file",
    );
    fails_with(
        &["generate", "-m", d.to_str().unwrap(), "-p", "x"],
        "no config.json",
    );

    let bad = d.join("badjson");
    copy_dir(&testdata().join("models/tiny-mini"), &bad);
    std::fs::write(bad.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    fails_with(
        &["generate", "-m", bad.to_str().unwrap(), "-p", "x"],
        "invalid JSON",
    );

    let arch = d.join("arch");
    copy_dir(&testdata().join("models/tiny-mini"), &arch);
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(arch.join("config.json")).unwrap()).unwrap();
    cfg["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(arch.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        &["generate", "-m", arch.to_str().unwrap(), "-p", "x"],
        "unsupported architecture",
    );

    let shape = d.join("shape");
    copy_dir(&testdata().join("models/tiny-mini"), &shape);
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(shape.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = serde_json::json!(100);
    std::fs::write(shape.join("config.json"), cfg.to_string()).unwrap();
    fails_with(
        &["generate", "-m", shape.to_str().unwrap(), "-p", "x"],
        "expected shape",
    );

    let trunc = d.join("trunc");
    copy_dir(&testdata().join("models/tiny-mini"), &trunc);
    let st = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    fails_with(
        &["generate", "-m", trunc.to_str().unwrap(), "-p", "x"],
        "truncated",
    );
    std::fs::write(trunc.join("model.safetensors"), &st[..5]).unwrap();
    fails_with(
        &["generate", "-m", trunc.to_str().unwrap(), "-p", "x"],
        "too short",
    );
    let mut garbage = st.clone();
    garbage[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(trunc.join("model.safetensors"), &garbage).unwrap();
    fails_with(
        &["generate", "-m", trunc.to_str().unwrap(), "-p", "x"],
        "header length",
    );

    // A tensor with an unsupported dtype: rewrite the header of the real file.
    let dtype = d.join("dtype");
    copy_dir(&testdata().join("models/tiny-mini"), &dtype);
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(st[8..8 + n].to_vec())
        .unwrap()
        .replacen("\"F32\"", "\"I32\"", 1);
    let mut patched = (header.len() as u64).to_le_bytes().to_vec();
    patched.extend(header.as_bytes());
    patched.extend(&st[8 + n..]);
    std::fs::write(dtype.join("model.safetensors"), patched).unwrap();
    fails_with(
        &["generate", "-m", dtype.to_str().unwrap(), "-p", "x"],
        "dtype I32 is not supported",
    );

    let missing = d.join("missing");
    copy_dir(&testdata().join("models/tiny-mini"), &missing);
    std::fs::remove_file(missing.join("tokenizer.json")).unwrap();
    fails_with(
        &["generate", "-m", missing.to_str().unwrap(), "-p", "x"],
        "tokenizer.json not found",
    );
}

#[test]
fn bad_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    let gg = std::fs::read(testdata().join("models/tiny-mini.gguf")).unwrap();
    let p = dir.path().join("x.gguf");
    let ps = p.to_str().unwrap();
    std::fs::write(&p, b"not a gguf at all").unwrap();
    fails_with(&["generate", "-m", ps, "-p", "x"], "GGUF magic");
    for cut in [10, 100, 5000, gg.len() / 2, gg.len() - 1] {
        std::fs::write(&p, &gg[..cut]).unwrap();
        fails_with(&["generate", "-m", ps, "-p", "x"], "GGUF?)");
    }
    let mut v = gg.clone();
    v[4] = 9; // version 9
    std::fs::write(&p, &v).unwrap();
    fails_with(&["generate", "-m", ps, "-p", "x"], "version 9");
    let mut v = gg.clone();
    v[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // absurd tensor count
    std::fs::write(&p, &v).unwrap();
    fails_with(&["generate", "-m", ps, "-p", "x"], "does not fit");
}

#[test]
fn bad_prompts_and_arguments() {
    let m = model("tiny-mini");
    fails_with(
        &[
            "generate",
            "-m",
            &m,
            "-p",
            &"토큰 ".repeat(200),
            "--ctx-size",
            "16",
        ],
        "context window",
    );
    fails_with(
        &["generate", "-m", &m, "-p", "x", "--ctx-size", "0"],
        "ctx-size",
    );
    fails_with(&["generate", "-m", &m, "-p", "x", "--top-p", "0"], "top_p");
    fails_with(
        &["generate", "-m", &m, "-p", "x", "--temperature=-1"],
        "temperature",
    );
    fails_with(&["detokenize", "-m", &m, "--ids", "1,x"], "not a token id");
    fails_with(
        &["detokenize", "-m", &m, "--ids", "1,999999"],
        "outside the vocabulary",
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.txt");
    std::fs::write(&f, [0x41, 0xff, 0xfe, 0x42]).unwrap();
    fails_with(
        &["tokenize", "-m", &m, "--file", f.to_str().unwrap()],
        "not valid UTF-8",
    );
    fails_with(
        &["perplexity", "-m", &m, "--file", f.to_str().unwrap()],
        "not valid UTF-8",
    );
    let j = dir.path().join("bad.json");
    std::fs::write(&j, "[{\"role\": ").unwrap();
    fails_with(
        &["render", "-m", &m, "--messages", j.to_str().unwrap()],
        "not valid JSON",
    );
    std::fs::write(&j, "{\"role\": \"user\"}").unwrap();
    fails_with(
        &["render", "-m", &m, "--messages", j.to_str().unwrap()],
        "must be a JSON array",
    );
    std::fs::write(&j, "[1, \"x\"]").unwrap();
    fails_with(
        &["perplexity", "-m", &m, "--ids-file", j.to_str().unwrap()],
        "list of token ids",
    );
    std::fs::write(&j, "[1]").unwrap();
    fails_with(
        &["perplexity", "-m", &m, "--ids-file", j.to_str().unwrap()],
        "at least two tokens",
    );
    std::fs::write(&j, "[1, 5000000]").unwrap();
    fails_with(
        &["perplexity", "-m", &m, "--ids-file", j.to_str().unwrap()],
        "outside the model's vocabulary",
    );
}

#[test]
fn serve_config_errors_name_the_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let bad = write(
        "bad.toml",
        "[backends.a]\ntype = \"openai\"\nregion = \"domestic\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.m]\nbackends = [\"b\"]\n",
    );
    fails_with(
        &["serve", "--config", &bad],
        "bad.toml:6: `models.m.backends`",
    );
    let syntax = write("syntax.toml", "[backends.a\n");
    fails_with(&["serve", "--config", &syntax], "line 1");
    fails_with(
        &["serve", "--config", "/nonexistent/mideum.toml"],
        "cannot read /nonexistent/mideum.toml",
    );
    let local = write(
        "local.toml",
        "[backends.l]\ntype = \"local\"\nserved = \"midm\"\n[models.m]\nbackends = [\"l\"]\n",
    );
    fails_with(
        &["serve", "--config", &local],
        "no local model named \"midm\"",
    );
    let keys = write(
        "keys.toml",
        "[server]\napi_keys_env = \"MIDEUM_TEST_SURELY_UNSET_KEYS\"\n",
    );
    fails_with(
        &["serve", "--config", &keys],
        "MIDEUM_TEST_SURELY_UNSET_KEYS",
    );
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../mideum.example.toml");
    // The example parses; it then stops at its first missing API key variable.
    fails_with(
        &["serve", "--config", &example.to_string_lossy()],
        "is not set",
    );
}
