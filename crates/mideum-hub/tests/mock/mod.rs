//! A small imitation of the Hugging Face hub on 127.0.0.1 (ephemeral port), for tests:
//! `GET /api/models/{org}/{name}/revision/{rev}` (model info with siblings, git blob ids and
//! LFS SHA-256), `GET /{org}/{name}/resolve/{rev}/{file}` (LFS files redirect to `/cdn/<sha>`),
//! Range requests, ETags, and fault injection. Every request is recorded.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone)]
pub struct MockFile {
    pub name: String,
    pub data: Arc<Vec<u8>>,
    pub lfs: bool,
    /// Listed in the model info but answering 404 (a broken mirror).
    pub missing: bool,
}

#[derive(Clone)]
pub struct MockRepo {
    pub id: String,
    pub commit: String,
    pub files: Vec<MockFile>,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub token: Option<String>,
    /// Gated: 403 GatedRepo for everyone.
    pub gated: bool,
}

impl MockRepo {
    pub fn new(id: &str, commit_seed: u8) -> MockRepo {
        MockRepo {
            id: id.into(),
            commit: format!("{:02x}", commit_seed).repeat(20),
            files: vec![],
            token: None,
            gated: false,
        }
    }

    /// Adds a file; `.safetensors`/`.gguf` files are served as LFS.
    pub fn file(mut self, name: &str, data: Vec<u8>) -> MockRepo {
        let lfs = name.ends_with(".safetensors") || name.ends_with(".gguf");
        self.files.push(MockFile {
            name: name.into(),
            data: Arc::new(data),
            lfs,
            missing: false,
        });
        self
    }

    /// Adds every file of a directory in testdata/models.
    pub fn dir(mut self, dir: &Path) -> MockRepo {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for n in names {
            let data = std::fs::read(dir.join(&n)).unwrap();
            self = self.file(&n, data);
        }
        self
    }

    pub fn data(&self, name: &str) -> Arc<Vec<u8>> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .data
            .clone()
    }
}

#[derive(Clone, Debug)]
pub struct Request {
    pub path: String,
    /// Sent in absolute form (`GET http://host/path`), as to a proxy.
    pub proxied_to: Option<String>,
    pub range: Option<String>,
    pub auth: Option<String>,
}

#[derive(Default)]
pub struct Faults {
    /// Close the connection after this many body bytes, on the next N full (non-Range) GETs.
    pub cut_after: HashMap<String, (u64, u32)>,
    /// Flip a byte in the next N responses for this file.
    pub corrupt: HashMap<String, u32>,
    /// Send this file in `chunk`-byte pieces with `delay` between them.
    pub slow: HashMap<String, (usize, Duration)>,
    /// Answer the model info with an HTML page.
    pub html_info: bool,
    /// Delay before every /cdn response (to make concurrent pulls overlap).
    pub cdn_delay: Option<Duration>,
}

pub struct MockHub {
    pub url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
    pub faults: Arc<Mutex<Faults>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    mideum_hub::download::sha256_bytes(b)
}

pub fn git_blob_id(b: &[u8]) -> String {
    mideum_hub::download::git_blob_sha1_bytes(b)
}

struct State {
    repos: Vec<MockRepo>,
    requests: Arc<Mutex<Vec<Request>>>,
    faults: Arc<Mutex<Faults>>,
}

impl MockHub {
    pub fn start(repos: Vec<MockRepo>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Mutex::new(Faults::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            repos,
            requests: requests.clone(),
            faults: faults.clone(),
        });
        let stop2 = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = state.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &st);
                });
            }
        });
        MockHub {
            url: format!("http://{addr}"),
            requests,
            faults,
            stop,
            addr,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    pub fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.requests().iter().filter(|r| pred(r)).count()
    }

    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

fn respond(
    w: &mut TcpStream,
    status: u16,
    reason: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    w.write_all(h.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

fn err(w: &mut TcpStream, status: u16, code: &str, msg: &str) -> std::io::Result<()> {
    let reason = match status {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        _ => "Error",
    };
    let body = format!("{{\"error\":\"{msg}\"}}");
    respond(
        w,
        status,
        reason,
        &[
            ("x-error-code", code.to_string()),
            ("content-type", "application/json".into()),
        ],
        body.as_bytes(),
    )
}

fn read_head(
    r: &mut BufReader<TcpStream>,
) -> std::io::Result<(String, String, HashMap<String, String>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l)? == 0 {
            break;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok((method, target, headers))
}

fn serve(conn: TcpStream, st: &State) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    let (mut method, mut target, mut headers) = read_head(&mut r)?;
    // Acting as an HTTP proxy: a CONNECT tunnel, or an absolute URL in the request line.
    let mut proxied_to = None;
    if method == "CONNECT" {
        proxied_to = Some(target.clone());
        w.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        w.flush()?;
        (method, target, headers) = read_head(&mut r)?;
    }
    if let Some(rest) = target.strip_prefix("http://") {
        let i = rest.find('/').unwrap_or(rest.len());
        proxied_to = Some(rest[..i].to_string());
        target = rest[i..].to_string();
    }
    let path = target.split('?').next().unwrap_or("").to_string();
    st.requests.lock().unwrap().push(Request {
        path: path.clone(),
        proxied_to,
        range: headers.get("range").cloned(),
        auth: headers.get("authorization").cloned(),
    });
    if method != "GET" {
        return err(&mut w, 405, "", "only GET");
    }
    let auth = headers.get("authorization").cloned();
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // {org}/{name}/revision/{rev}
        let seg: Vec<&str> = rest.splitn(4, '/').collect();
        if seg.len() != 4 || seg[2] != "revision" {
            return err(&mut w, 404, "", "bad path");
        }
        let id = format!("{}/{}", seg[0], seg[1]);
        let rev = seg[3].replace("%2F", "/");
        if st.faults.lock().unwrap().html_info {
            return respond(
                &mut w,
                200,
                "OK",
                &[("content-type", "text/html; charset=utf-8".into())],
                b"<!doctype html><html><body>Corporate login portal</body></html>",
            );
        }
        let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
            return err(&mut w, 404, "RepoNotFound", "Repository not found");
        };
        if let Some(e) = access(&mut w, repo, auth.as_deref()) {
            return e;
        }
        if rev != "main" && rev != repo.commit {
            return err(&mut w, 404, "RevisionNotFound", "Invalid rev id");
        }
        let siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({
                    "rfilename": f.name,
                    "size": f.data.len(),
                    "blobId": git_blob_id(&f.data),
                });
                if f.lfs {
                    s["lfs"] = serde_json::json!({"sha256": sha256_hex(&f.data), "size": f.data.len(), "pointerSize": 134});
                }
                s
            })
            .collect();
        let body = serde_json::json!({"id": repo.id, "modelId": repo.id, "sha": repo.commit, "siblings": siblings});
        return respond(
            &mut w,
            200,
            "OK",
            &[("content-type", "application/json".into())],
            body.to_string().as_bytes(),
        );
    }
    if let Some(sha) = path.strip_prefix("/cdn/") {
        let file = st
            .repos
            .iter()
            .flat_map(|r| r.files.iter())
            .find(|f| sha256_hex(&f.data) == sha)
            .cloned();
        let Some(file) = file else {
            return err(&mut w, 404, "", "no such object");
        };
        let delay = st.faults.lock().unwrap().cdn_delay;
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        return send_file(
            &mut w,
            st,
            &file,
            headers.get("range").map(String::as_str),
            sha,
        );
    }
    // /{org}/{name}/resolve/{rev}/{file...}
    let seg: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if seg.len() == 5 && seg[2] == "resolve" {
        let id = format!("{}/{}", seg[0], seg[1]);
        let rev = seg[3].replace("%2F", "/");
        let fname = seg[4].replace("%20", " ");
        let Some(repo) = st.repos.iter().find(|r| r.id == id) else {
            return err(&mut w, 404, "RepoNotFound", "Repository not found");
        };
        if let Some(e) = access(&mut w, repo, auth.as_deref()) {
            return e;
        }
        if rev != "main" && rev != repo.commit {
            return err(&mut w, 404, "RevisionNotFound", "Invalid rev id");
        }
        let Some(file) = repo.files.iter().find(|f| f.name == fname && !f.missing) else {
            return err(&mut w, 404, "EntryNotFound", "Entry not found");
        };
        if file.lfs {
            let sha = sha256_hex(&file.data);
            return respond(
                &mut w,
                302,
                "Found",
                &[
                    ("location", format!("/cdn/{sha}")),
                    ("x-repo-commit", repo.commit.clone()),
                    ("x-linked-etag", format!("\"{sha}\"")),
                    ("x-linked-size", file.data.len().to_string()),
                    ("etag", format!("\"{}\"", git_blob_id(&file.data))),
                ],
                b"",
            );
        }
        let etag = git_blob_id(&file.data);
        return send_file(
            &mut w,
            st,
            file,
            headers.get("range").map(String::as_str),
            &etag,
        );
    }
    err(&mut w, 404, "", "not found")
}

fn access(w: &mut TcpStream, repo: &MockRepo, auth: Option<&str>) -> Option<std::io::Result<()>> {
    if repo.gated {
        return Some(err(w, 403, "GatedRepo", "Access to model is restricted. You must have access to it and be authenticated to access it."));
    }
    if let Some(t) = &repo.token {
        if auth != Some(&format!("Bearer {t}")) {
            return Some(err(
                w,
                401,
                "",
                "Invalid credentials in Authorization header",
            ));
        }
    }
    None
}

fn send_file(
    w: &mut TcpStream,
    st: &State,
    file: &MockFile,
    range: Option<&str>,
    etag: &str,
) -> std::io::Result<()> {
    let mut data: Vec<u8> = file.data.to_vec();
    let len = data.len() as u64;
    let (cut, slow) = {
        let mut f = st.faults.lock().unwrap();
        if let Some(n) = f.corrupt.get_mut(&file.name) {
            if *n > 0 {
                *n -= 1;
                let i = data.len() / 2;
                data[i] ^= 0x5a;
            }
        }
        let cut = if range.is_none() {
            match f.cut_after.get_mut(&file.name) {
                Some((at, n)) if *n > 0 => {
                    *n -= 1;
                    Some(*at)
                }
                _ => None,
            }
        } else {
            None
        };
        (cut, f.slow.get(&file.name).cloned())
    };
    let mut start = 0u64;
    let mut status = (200, "OK");
    let mut extra = vec![
        ("etag", format!("\"{etag}\"")),
        ("accept-ranges", "bytes".to_string()),
    ];
    if let Some(r) = range {
        let from = r
            .strip_prefix("bytes=")
            .and_then(|x| x.strip_suffix('-'))
            .and_then(|x| x.parse::<u64>().ok());
        match from {
            Some(f) if f < len => {
                start = f;
                status = (206, "Partial Content");
                extra.push(("content-range", format!("bytes {f}-{}/{len}", len - 1)));
            }
            _ => {
                return respond(
                    w,
                    416,
                    "Range Not Satisfiable",
                    &[("content-range", format!("bytes */{len}"))],
                    b"",
                );
            }
        }
    }
    let body = &data[start as usize..];
    let mut h = format!(
        "HTTP/1.1 {} {}\r\nconnection: close\r\ncontent-length: {}\r\ncontent-type: application/octet-stream\r\n",
        status.0,
        status.1,
        body.len()
    );
    for (k, v) in &extra {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    w.write_all(h.as_bytes())?;
    if let Some(at) = cut {
        w.write_all(&body[..(at as usize).min(body.len())])?;
        w.flush()?;
        let _ = w.shutdown(std::net::Shutdown::Both);
        return Ok(());
    }
    if let Some((chunk, delay)) = slow {
        for c in body.chunks(chunk.max(1)) {
            w.write_all(c)?;
            w.flush()?;
            std::thread::sleep(delay);
        }
        return Ok(());
    }
    w.write_all(body)?;
    w.flush()
}
