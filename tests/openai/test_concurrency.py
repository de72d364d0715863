"""Continuous batching seen from clients: concurrent streams give the same tokens as one stream
alone, a client that goes away frees its sequence, a full queue answers 429."""
import asyncio
import os
import shlex
import subprocess
import threading
import time

import openai
import pytest

from conftest import LOG_DIR, ROOT, _free_port, mideum_bin, parse_metrics

NO_EOS = {"ignore_eos": True}
TOPICS = [
    "회의 일정", "출장 보고서", "예산 검토", "고객 문의", "신제품 출시", "보안 점검", "채용 공고", "교육 계획",
    "서버 장애", "계약 갱신", "주간 회의", "연차 신청", "품질 검사", "물류 배송", "마케팅 전략", "연구 개발",
]


def _metric(server, name, model=None) -> float:
    status, body = server.get("/metrics")
    assert status == 200
    samples = parse_metrics(body).get(name)
    assert samples is not None, f"/metrics has no {name}"
    return sum(v for lbl, v in samples if model is None or lbl.get("model") in (None, model))


def test_16_concurrent_streams_equal_each_alone(client, aclient, mini):
    def req(i):
        return dict(
            model=mini, messages=[{"role": "user", "content": f"{TOPICS[i]}에 대해 알려 주세요"}],
            max_tokens=16, temperature=0, extra_body=NO_EOS,
        )

    alone = [client.chat.completions.create(**req(i)).choices[0].message.content for i in range(16)]

    async def one(i):
        text, finish = "", None
        stream = await aclient.chat.completions.create(stream=True, **req(i))
        async for ch in stream:
            for c in ch.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        return text, finish

    async def all_at_once():
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(16))), timeout=120)

    together = asyncio.run(all_at_once())
    assert [f for _, f in together] == ["length"] * 16
    diffs = [i for i in range(16) if together[i][0] != alone[i]]
    assert not diffs, f"streams {diffs} differ from their run alone: {[(alone[i], together[i][0]) for i in diffs]}"


def test_client_disconnect_frees_sequence(server, client, gguf):
    cancelled0 = _metric(server, "mideum_requests_cancelled_total", gguf)
    generated0 = _metric(server, "mideum_generation_tokens_total", gguf)
    # A long generation (most of tiny-bf16's 512-token window) read for one chunk, then dropped.
    stream = client.completions.create(
        model=gguf, prompt="안녕", max_tokens=480, temperature=0, stream=True, extra_body=NO_EOS
    )
    it = iter(stream)
    next(it)
    running_mid = _metric(server, "mideum_running_sequences", gguf)
    stream.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _metric(server, "mideum_running_sequences", gguf) == 0:
            break
        time.sleep(0.05)
    assert _metric(server, "mideum_running_sequences", gguf) == 0, "sequence still running after its client left"
    if running_mid >= 1:
        # It was still generating when the client left: it must be counted as cancelled.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _metric(server, "mideum_requests_cancelled_total", gguf) <= cancelled0:
            time.sleep(0.05)
        assert _metric(server, "mideum_requests_cancelled_total", gguf) == cancelled0 + 1
        # ... and it stopped generating: far fewer than the 480 tokens asked for.
        assert _metric(server, "mideum_generation_tokens_total", gguf) - generated0 < 480
    # The server still answers.
    r = client.chat.completions.create(model=gguf, messages=[{"role": "user", "content": "안녕"}], max_tokens=2)
    assert r.choices


@pytest.fixture(scope="module")
def small_server(small_server_proc):
    return small_server_proc[0]


@pytest.fixture(scope="module")
def small_server_proc():
    """A second server with one running sequence and one queue slot, so that a burst fills it."""
    args = shlex.split(os.environ.get("MIDEUM_SMALL_QUEUE_ARGS", "--max-running 1 --max-queue 1"))
    port = _free_port()
    log_path = LOG_DIR / "server-small.log"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(mideum_bin()), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model", str(ROOT / "testdata/models/tiny-bf16.gguf"), *args],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            import urllib.request

            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"mideum serve {' '.join(args)} exited: {log_path.read_text('utf-8', 'replace')[-2000:]}")
                try:
                    with urllib.request.urlopen(base + "/ready", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("small server not ready")
                time.sleep(0.1)
            yield base, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def test_full_queue_answers_429(small_server):
    c = openai.OpenAI(base_url=small_server + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    model = c.models.list().data[0].id
    results, lock = [], threading.Lock()

    def one(i):
        try:
            c.completions.create(model=model, prompt=f"{i}번 요청", max_tokens=400, temperature=0, extra_body=NO_EOS)
            out = ("ok", None)
        except openai.RateLimitError as e:
            out = ("429", e.response)
        except Exception as e:  # noqa: BLE001 - reported below
            out = ("error", repr(e))
        with lock:
            results.append(out)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    kinds = [k for k, _ in results]
    assert "error" not in kinds, results
    assert kinds.count("ok") >= 1
    assert kinds.count("429") >= 1, f"8 requests at once on 1 running + 1 queued slot, none refused: {kinds}"
    _check_429(next(r for k, r in results if k == "429"))


def _check_429(resp):
    assert resp.headers.get("retry-after"), "429 without Retry-After"
    body = resp.json()
    assert "error" in body and {"message", "type", "param", "code"} <= set(body["error"])


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc")
def test_rejected_burst_keeps_rss_bounded(small_server_proc):
    """200 requests against a full queue: all beyond the slots are refused with 429 and the
    server's memory does not grow with them."""
    base, proc = small_server_proc
    c = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=60)
    model = c.models.list().data[0].id
    before = _rss_kb(proc.pid)
    big = "가나다라마바사" * 20

    async def burst():
        ac = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0, timeout=60)

        async def one(i):
            try:
                await ac.completions.create(model=model, prompt=f"{i} {big}"[:100], max_tokens=200,
                                            temperature=0, extra_body=NO_EOS)
                return "ok"
            except openai.RateLimitError:
                return "429"
            except openai.BadRequestError:
                return "400"

        try:
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(200))), timeout=120)
        finally:
            await ac.close()

    kinds = asyncio.run(burst())
    assert kinds.count("429") >= 100, {k: kinds.count(k) for k in set(kinds)}
    after = _rss_kb(proc.pid)
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) // 1024} MiB over a refused burst"
