"""Two-track routing driven by the official client: mideum serve --config in front of a recording
stub provider (a small OpenAI-compatible server in this process, on 127.0.0.1). Checks that
personal data never reaches the stub in clear, that pseudonyms come back restored (whole, streamed,
inside tool-call arguments), that a blocking policy answers 403 without contacting the stub, and
that a stream cut upstream surfaces as an error in the client, never as a silent success."""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest

from conftest import LOG_DIR, MODEL_DIRS, ROOT, _free_port, mideum_bin

PHONE = "010-1234-5678"
RRN = "900101-1234568"


class Stub(BaseHTTPRequestHandler):
    seen: list[str] = []

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):
        self._send(200, {"object": "list", "data": []})

    def _send(self, status, obj):
        b = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
        Stub.seen.append(body)
        req = json.loads(body)
        text = "답변: " + str(req["messages"][-1]["content"])
        tool = (req.get("tools") or [{}])[0].get("function", {}).get("name")
        args = json.dumps({"text": text}, ensure_ascii=False)
        if not req.get("stream"):
            msg = {"role": "assistant", "content": text}
            if tool:
                msg = {"role": "assistant", "content": None,
                       "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": tool, "arguments": args}}]}
            self._send(200, {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "stub",
                             "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        src = args if tool else text
        pieces = [src[i:i + 3] for i in range(0, len(src), 3)]
        if self.path.startswith("/cut"):
            pieces = pieces[:2]
        for i, p in enumerate(pieces):
            if tool:
                tc = {"index": 0, "function": {"arguments": p}}
                if i == 0:
                    tc.update({"id": "call_1", "type": "function"})
                    tc["function"]["name"] = tool
                delta = {"tool_calls": [tc]}
            else:
                delta = {"content": p}
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stub",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
            self.wfile.flush()
        if not self.path.startswith("/cut"):
            fin = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "stub",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            self.wfile.write(f"data: {json.dumps(fin)}\n\ndata: [DONE]\n\n".encode())
        self.close_connection = True


@pytest.fixture(scope="module")
def routed():
    stub = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    su = f"http://127.0.0.1:{stub.server_address[1]}"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    cfg = LOG_DIR / "route.toml"
    cfg.write_text(f"""
[backends.kr]
type = "openai"
region = "domestic"
base_url = "{su}/v1"
[backends.cut]
type = "openai"
region = "domestic"
base_url = "{su}/cut/v1"
retries = 0
[backends.tiny]
type = "local"
served = "tiny-mini"
[models.ext]
backends = ["kr", "tiny"]
[models.cut]
backends = ["cut"]
[models.strict]
backends = ["kr"]
[policies.default.rules]
unique_id = {{ domestic = "block" }}
""", encoding="utf-8")
    port = _free_port()
    log = open(LOG_DIR / "route-server.log", "wb")
    proc = subprocess.Popen([str(mideum_bin()), "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--config", str(cfg), "--model", str(MODEL_DIRS["mini"])],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (LOG_DIR / "route-server.log").read_text("utf-8", "replace")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=30.0)
    try:
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        stub.shutdown()


def test_pseudonymized_and_restored(routed):
    before = len(Stub.seen)
    raw = routed.chat.completions.with_raw_response.create(
        model="ext", messages=[{"role": "user", "content": f"연락처 {PHONE}로 연락주세요"}])
    assert raw.headers["x-ai-generated"] == "true"
    assert raw.headers["x-mideum-route"] == "domestic"
    assert raw.headers["x-mideum-backend"] == "kr"
    r = raw.parse()
    assert PHONE in r.choices[0].message.content
    sent = Stub.seen[before:]
    assert sent and all(PHONE not in s and "01012345678" not in s for s in sent)


def test_streamed_and_tool_arguments_restored(routed):
    before = len(Stub.seen)
    text = "".join(c.choices[0].delta.content or "" for c in routed.chat.completions.create(
        model="ext", stream=True, messages=[{"role": "user", "content": f"연락처 {PHONE}로 연락주세요"}]) if c.choices)
    assert PHONE in text
    r = routed.chat.completions.create(
        model="ext", messages=[{"role": "user", "content": f"연락처 {PHONE}로 연락주세요"}],
        tools=[{"type": "function", "function": {"name": "call", "parameters": {"type": "object", "properties": {}}}}])
    args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    assert PHONE in args["text"]
    assert all(PHONE not in s for s in Stub.seen[before:])


def test_blocked_never_reaches_the_provider(routed):
    before = len(Stub.seen)
    with pytest.raises(openai.PermissionDeniedError) as e:
        routed.chat.completions.create(model="strict", messages=[{"role": "user", "content": f"주민등록번호: {RRN} 입니다"}])
    assert e.value.body["code"] == "blocked_by_policy"
    assert len(Stub.seen) == before


def test_cut_stream_is_an_error(routed):
    with pytest.raises(openai.APIError):
        for _ in routed.chat.completions.create(model="cut", stream=True, messages=[{"role": "user", "content": "안녕하세요 반갑습니다"}]):
            pass
