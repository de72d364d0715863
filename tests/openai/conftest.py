"""Start `mideum serve` once for the whole session and give the tests an official OpenAI client.

The server runs on a free 127.0.0.1 port with two tiny random-weight checkpoints from testdata:
the safetensors directory tiny-mini (context 256) and the GGUF tiny-bf16 (context 512). Nothing
here talks to any address but 127.0.0.1.

Environment:
  MIDEUM_BIN          the binary (default target/debug/mideum under the repository root)
  MIDEUM_SERVE_ARGS   extra arguments appended to `mideum serve` (split on whitespace)
  MIDEUM_TEST_URL     use an already running server at this loopback URL instead of starting one
"""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIRS = {
    # role in the tests -> path served
    "mini": ROOT / "testdata" / "models" / "tiny-mini",
    "gguf": ROOT / "testdata" / "models" / "tiny-bf16.gguf",
}
READY_TIMEOUT_S = 60.0
LOG_DIR = ROOT / "target" / "openai-tests"


def mideum_bin() -> Path:
    binary = Path(os.environ.get("MIDEUM_BIN", ROOT / "target" / "debug" / "mideum"))
    return binary if binary.is_absolute() else ROOT / binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def _assert_loopback(url: str) -> None:
    host = urllib.request.urlparse(url).hostname or ""
    if not (host in ("localhost", "::1") or host.startswith("127.")):
        raise pytest.UsageError(f"refusing to test a non-loopback server: {url}")


class Server:
    def __init__(self, base_url: str, proc: subprocess.Popen | None, log_path: Path | None):
        self.base_url = base_url.rstrip("/")
        self.proc = proc
        self.log_path = log_path

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        return _get(self.base_url + path, timeout)

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text("utf-8", "replace")[-n:]
        return ""

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


@pytest.fixture(scope="session")
def server():
    url = os.environ.get("MIDEUM_TEST_URL")
    if url:
        _assert_loopback(url)
        srv = Server(url, None, None)
        _wait_ready(srv)
        yield srv
        return

    binary = mideum_bin()
    if not binary.exists():
        pytest.exit(f"mideum binary not found at {binary} (build it or set MIDEUM_BIN)", returncode=2)
    port = _free_port()
    cmd = [str(binary), "serve", "--host", "127.0.0.1", "--port", str(port)]
    for p in MODEL_DIRS.values():
        cmd += ["--model", str(p)]
    cmd += shlex.split(os.environ.get("MIDEUM_SERVE_ARGS", ""))
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / "server.log"
    log = open(log_path, "wb")
    env = dict(os.environ)
    env.setdefault("MIDEUM_LOG", "info")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    srv = Server(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        _wait_ready(srv)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_ready(srv: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        if not srv.alive():
            pytest.exit(
                f"mideum serve exited with {srv.proc.returncode} before it was ready:\n{srv.log_tail()}",
                returncode=3,
            )
        try:
            status, body = srv.get("/ready", timeout=2.0)
            if status == 200:
                return
            last = f"{status} {body[:200]}"
        except (OSError, urllib.error.URLError) as e:
            last = repr(e)
        time.sleep(0.1)
    pytest.exit(f"mideum serve not ready after {READY_TIMEOUT_S}s (last: {last}):\n{srv.log_tail()}", returncode=3)


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.v1, api_key="sk-test", max_retries=0, timeout=60.0)


@pytest.fixture(scope="session")
def aclient(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.v1, api_key="sk-test", max_retries=0, timeout=60.0)


@pytest.fixture(scope="session")
def model_ids(client) -> list[str]:
    return [m.id for m in client.models.list().data]


def _pick(model_ids: list[str], stem: str) -> str:
    # The server names a model after its directory or file stem; accept any id containing the stem.
    for m in model_ids:
        if m == stem:
            return m
    for m in model_ids:
        if stem in m:
            return m
    pytest.fail(f"no served model named like {stem!r} in {model_ids}")


@pytest.fixture(scope="session")
def mini(model_ids) -> str:
    """tiny-mini (safetensors directory, context 256)."""
    return _pick(model_ids, "tiny-mini")


@pytest.fixture(scope="session")
def gguf(model_ids) -> str:
    """tiny-bf16.gguf (GGUF, context 512): used where the prompt is long (tools)."""
    return _pick(model_ids, "tiny-bf16")


@pytest.fixture(scope="session")
def render():
    """Expected prompt ids for a conversation, from `mideum render --json` (whose output equals
    transformers' apply_chat_template, by the golden tests). Returns a function
    (role, messages, tools=None) -> list of ids."""
    binary = mideum_bin()
    if not binary.exists():
        pytest.skip("no local mideum binary to render expected prompts")
    tmp = LOG_DIR / "render"
    tmp.mkdir(parents=True, exist_ok=True)

    def _render(role: str, messages: list, tools: list | None = None) -> list[int]:
        mpath = tmp / "messages.json"
        mpath.write_text(json.dumps(messages, ensure_ascii=False), "utf-8")
        cmd = [str(binary), "render", "-m", str(MODEL_DIRS[role]), "--messages", str(mpath), "--json"]
        if tools is not None:
            tpath = tmp / "tools.json"
            tpath.write_text(json.dumps(tools, ensure_ascii=False), "utf-8")
            cmd += ["--tools", str(tpath)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=60, check=True)
        return json.loads(out.stdout)["ids"]

    return _render


def parse_metrics(text: str) -> dict[str, list[tuple[dict, float]]]:
    """Prometheus text exposition -> {name: [(labels, value), ...]}. Raises on malformed lines."""
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "{" in line:
            name, rest = line.split("{", 1)
            labels_s, value_s = rest.rsplit("}", 1)
            labels = {}
            for part in _split_labels(labels_s):
                k, v = part.split("=", 1)
                labels[k.strip()] = json.loads(v)
        else:
            name, value_s = line.split(None, 1)
            labels = {}
        value_s = value_s.split()[0]  # drop an optional timestamp
        value = float(value_s.replace("+Inf", "inf").replace("-Inf", "-inf"))
        out.setdefault(name.strip(), []).append((labels, value))
    return out


def _split_labels(s: str) -> list[str]:
    parts, cur, in_q, esc = [], "", False, False
    for ch in s:
        if esc:
            cur += ch
            esc = False
        elif ch == "\\":
            cur += ch
            esc = True
        elif ch == '"':
            cur += ch
            in_q = not in_q
        elif ch == "," and not in_q:
            if cur.strip():
                parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return parts
