#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server on this machine (mideum serve, llama-server,
vLLM, ...), so that every server is measured the same way.

For each concurrency level (default 1, 4, 8, 16) it keeps that many streaming requests in
flight (closed loop) until --requests-per-level have finished, every request asking for exactly
--max-tokens output tokens ("ignore_eos": true, which mideum and llama-server accept), and
reports aggregate output tokens/s, time to first token (TTFT) and inter-token latency (ITL)
p50/p99, and per-stream decode speed. ITL is the gap between stream chunks that carry text; a server
that holds text back (an unfinished UTF-8 character, a possible stop string) sends several
tokens in one chunk, which the tok/chunk column shows.

Every prompt starts with the same system prompt (a Korean text of about --prefix-tokens
tokens, as Mi:dm's template puts one in front of every conversation), then a distinct user
message. Before the levels, a prefix probe measures the TTFT of the first conversation behind
a never-seen prefix (cold) and of new conversations behind the same prefix (warm: what prefix
caching buys). A random tag at the start of the prefix makes it new on every run.

Only loopback URLs are accepted. Every loop is bounded in count and time.

    pip install -r bench/requirements-loadgen.txt
    python3 bench/loadgen.py --url http://127.0.0.1:8080 --max-tokens 64 [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
import urllib.parse

import aiohttp

# Korean business prose for the shared system prompt; repeated (numbered) to the size wanted.
PREFIX_SENTENCES = [
    "당신은 기업 고객을 돕는 업무 도우미입니다.",
    "답변은 정확하고 간결한 한국어로 작성하며, 확실하지 않은 내용은 추측하지 말고 모른다고 말합니다.",
    "사내 규정, 계약서, 회의록, 보고서를 요약하거나 설명할 때에는 원문의 숫자와 날짜를 그대로 유지합니다.",
    "개인정보(주민등록번호, 전화번호, 주소, 계좌번호)는 요청받더라도 출력하지 않습니다.",
    "표가 필요한 경우 항목과 값을 나누어 정리하고, 단계가 있는 절차는 번호를 붙여 설명합니다.",
    "고객의 질문이 모호하면 필요한 정보를 한 번에 하나씩 되묻습니다.",
    "법률, 의료, 금융 관련 질문에는 일반적인 정보만 제공하고 전문가의 확인을 권합니다.",
    "외부 시스템 호출이 필요하면 제공된 도구 목록에서 알맞은 도구를 골라 형식에 맞게 요청합니다.",
]
USER_TOPICS = [
    "다음 주 회의 일정을 정리해 주세요.", "출장 보고서 초안을 써 주세요.", "예산 검토 결과를 요약해 주세요.",
    "고객 문의에 대한 답장을 써 주세요.", "신제품 출시 계획을 설명해 주세요.", "보안 점검 항목을 알려 주세요.",
    "채용 공고 문구를 다듬어 주세요.", "교육 계획표를 만들어 주세요.", "서버 장애 보고서를 써 주세요.",
    "계약 갱신 절차를 알려 주세요.", "주간 업무 보고를 요약해 주세요.", "연차 신청 방법을 알려 주세요.",
    "품질 검사 기준을 정리해 주세요.", "물류 배송 지연 안내문을 써 주세요.", "마케팅 전략을 제안해 주세요.",
    "연구 개발 일정을 점검해 주세요.",
]
MAX_LEVEL_CONCURRENCY = 256
MAX_REQUESTS_PER_LEVEL = 10_000


def check_loopback(url: str) -> str:
    u = urllib.parse.urlparse(url)
    host = (u.hostname or "").lower()
    if u.scheme not in ("http", "https") or not (host == "localhost" or host == "::1" or host.startswith("127.")):
        sys.exit(f"loadgen: only loopback servers are measured (127.0.0.0/8, localhost, ::1), not {url!r}")
    return url.rstrip("/").removesuffix("/v1")


def percentile(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def make_prefix(n_sentences: int, tag: str) -> str:
    lines = [f"[세션 {tag}]"]
    for i in range(n_sentences):
        lines.append(f"{i + 1}. {PREFIX_SENTENCES[i % len(PREFIX_SENTENCES)]}")
    return "\n".join(lines)


class Client:
    def __init__(self, base: str, args):
        self.base = base
        self.args = args
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self):
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.args.request_timeout),
            connector=aiohttp.TCPConnector(limit=MAX_LEVEL_CONCURRENCY),
        )
        return self

    async def __aexit__(self, *exc):
        await self.session.close()

    async def models(self) -> list[str]:
        async with self.session.get(self.base + "/v1/models") as r:
            r.raise_for_status()
            return [m["id"] for m in (await r.json())["data"]]

    def body(self, system: str, user: str, max_tokens: int, stream: bool) -> tuple[str, dict]:
        a = self.args
        common = {
            "model": a.model,
            "max_tokens": max_tokens,
            "temperature": a.temperature,
            "stream": stream,
        }
        if a.ignore_eos:
            common["ignore_eos"] = True
        if stream:
            common["stream_options"] = {"include_usage": True}
        if a.endpoint == "chat":
            msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            return "/v1/chat/completions", {**common, "messages": msgs}
        return "/v1/completions", {**common, "prompt": (system + "\n\n" if system else "") + user}

    async def prompt_tokens(self, system: str, user: str) -> int:
        path, body = self.body(system, user, 1, False)
        async with self.session.post(self.base + path, json=body) as r:
            text = await r.text()
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status}: {text[:300]}")
            return json.loads(text)["usage"]["prompt_tokens"]

    async def stream(self, system: str, user: str) -> dict:
        """One streaming request; returns its timings."""
        path, body = self.body(system, user, self.args.max_tokens, True)
        t0 = time.perf_counter()
        token_times: list[float] = []
        usage = None
        status = None
        try:
            async with self.session.post(self.base + path, json=body) as r:
                status = r.status
                if r.status != 200:
                    return {"ok": False, "status": r.status, "error": (await r.text())[:300]}
                async for raw in r.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    ev = json.loads(data)
                    if ev.get("usage"):
                        usage = ev["usage"]
                    for c in ev.get("choices") or []:
                        piece = (c.get("delta") or {}).get("content") if "delta" in c else c.get("text")
                        # A token event may carry empty text (llama-server sends one event per
                        # token even when the token renders as nothing, e.g. random weights
                        # producing control or partial UTF-8 tokens): count the event itself.
                        if piece is not None and not (piece == "" and c.get("finish_reason")):
                            token_times.append(time.perf_counter())
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            return {"ok": False, "status": status, "error": repr(e)}
        t_end = time.perf_counter()
        if not token_times:
            return {"ok": False, "status": status, "error": "no content in the stream"}
        n_out = usage["completion_tokens"] if usage else len(token_times)
        gaps = [b - a for a, b in zip(token_times, token_times[1:])]
        decode = (token_times[-1] - token_times[0])
        return {
            "ok": True,
            "ttft": token_times[0] - t0,
            "gaps": gaps,
            "n_out": n_out,
            "n_chunks": len(token_times),
            "prompt_tokens": usage["prompt_tokens"] if usage else None,
            "latency": t_end - t0,
            "decode_tps": (n_out - 1) / decode if decode > 0 and n_out > 1 else None,
        }


async def calibrate_prefix(cl: Client, target_tokens: int) -> int:
    """Number of prefix sentences that make about target_tokens prompt tokens (2 requests, with a
    throwaway tag so that the real prefix stays cold)."""
    if target_tokens <= 0:
        return 0
    tag = f"calib-{random.randrange(10**9)}"
    base = await cl.prompt_tokens(make_prefix(0, tag), USER_TOPICS[0])
    k = 16
    while True:  # at most 5 tries: 16, 8, 4, 2, 1 sentences (a small context may refuse 16)
        try:
            with_k = await cl.prompt_tokens(make_prefix(k, tag), USER_TOPICS[0])
            break
        except RuntimeError:
            if k == 1:
                raise
            k //= 2
    per = max((with_k - base) / k, 1e-3)
    return max(1, round(target_tokens / per))


async def prefix_probe(cl: Client, system: str, warm_runs: int) -> dict:
    """TTFT of the first conversation behind a new prefix, then of new conversations behind it."""
    cold = await cl.stream(system, "첫 번째 대화입니다. " + USER_TOPICS[0])
    warm = []
    for i in range(warm_runs):
        r = await cl.stream(system, f"새 대화 {i}: " + USER_TOPICS[(i + 1) % len(USER_TOPICS)])
        warm.append(r)
    ok_w = [r["ttft"] for r in warm if r["ok"]]
    return {
        "prompt_tokens": cold.get("prompt_tokens"),
        "cold_ttft_s": cold["ttft"] if cold["ok"] else None,
        "cold_error": None if cold["ok"] else cold.get("error"),
        "warm_ttft_s": ok_w,
        "warm_ttft_median_s": statistics.median(ok_w) if ok_w else None,
    }


async def run_level(cl: Client, system: str, conc: int, n_requests: int, time_limit: float) -> dict:
    results: list[dict] = []
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + time_limit

    async def worker(w: int):
        for i in counter:  # shared iterator: n_requests in all
            if time.perf_counter() > deadline:
                return
            user = f"요청 {conc}-{i}: {USER_TOPICS[i % len(USER_TOPICS)]}"
            results.append(await cl.stream(system, user))

    t0 = time.perf_counter()
    tasks = [asyncio.create_task(worker(w)) for w in range(conc)]
    done, pending = await asyncio.wait(tasks, timeout=time_limit + cl.args.request_timeout)
    for t in pending:
        t.cancel()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    per_stream = [r["decode_tps"] for r in ok if r["decode_tps"]]
    n_out = sum(r["n_out"] for r in ok)
    errors = [r for r in results if not r["ok"]]
    return {
        "concurrency": conc,
        "requests": len(results),
        "ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "output_tokens": n_out,
        "wall_s": wall,
        "agg_tok_s": n_out / wall if wall > 0 else None,
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p99_s": percentile(ttft, 99),
        "itl_p50_s": percentile(gaps, 50),
        "itl_p99_s": percentile(gaps, 99),
        "stream_tok_s_median": statistics.median(per_stream) if per_stream else None,
        "tokens_per_chunk": (n_out / sum(r["n_chunks"] for r in ok)) if ok else None,
    }


def fmt(x, scale=1.0, nd=2):
    return "-" if x is None else f"{x * scale:.{nd}f}"


def print_report(rep: dict) -> None:
    print(f"# {rep['url']}  model={rep['model']}  endpoint={rep['endpoint']}  "
          f"max_tokens={rep['max_tokens']}  prefix≈{rep['prefix_prompt_tokens']} prompt tokens")
    p = rep.get("prefix_probe")
    if p:
        print(f"prefix probe: cold TTFT {fmt(p['cold_ttft_s'])} s, warm TTFT median "
              f"{fmt(p['warm_ttft_median_s'])} s over {len(p['warm_ttft_s'])} new conversations"
              + (f"  (cold error: {p['cold_error']})" if p.get("cold_error") else ""))
    hdr = ["conc", "reqs", "err", "out tok", "wall s", "agg tok/s", "TTFT p50", "TTFT p99",
           "ITL p50 ms", "ITL p99 ms", "stream tok/s", "tok/chunk"]
    rows = [[str(l["concurrency"]), str(l["requests"]), str(l["errors"]), str(l["output_tokens"]),
             fmt(l["wall_s"], nd=1), fmt(l["agg_tok_s"]), fmt(l["ttft_p50_s"]), fmt(l["ttft_p99_s"]),
             fmt(l["itl_p50_s"], 1000, 1), fmt(l["itl_p99_s"], 1000, 1), fmt(l["stream_tok_s_median"]),
             fmt(l["tokens_per_chunk"])]
            for l in rep["levels"]]
    w = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)] if rows else [len(h) for h in hdr]
    print("| " + " | ".join(h.rjust(w[i]) for i, h in enumerate(hdr)) + " |")
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print("| " + " | ".join(c.rjust(w[i]) for i, c in enumerate(r)) + " |")
    for l in rep["levels"]:
        if l["first_error"]:
            print(f"  concurrency {l['concurrency']}: first error: {l['first_error']}")


async def main_async(args) -> dict:
    base = check_loopback(args.url)
    async with Client(base, args) as cl:
        if not args.model:
            ids = await cl.models()
            if not ids:
                sys.exit("loadgen: the server lists no model")
            args.model = ids[0]
        tag = f"{random.randrange(16**8):08x}"
        n_sent = await calibrate_prefix(cl, args.prefix_tokens)
        system = make_prefix(n_sent, tag) if args.prefix_tokens > 0 else ""
        rep = {
            "url": base, "model": args.model, "endpoint": args.endpoint, "max_tokens": args.max_tokens,
            "ignore_eos": args.ignore_eos, "temperature": args.temperature,
            "prefix_tokens_target": args.prefix_tokens, "prefix_prompt_tokens": None,
            "prefix_probe": None, "levels": [], "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if system and args.prefix_probe > 0:
            rep["prefix_probe"] = await prefix_probe(cl, system, args.prefix_probe)
            rep["prefix_prompt_tokens"] = rep["prefix_probe"]["prompt_tokens"]
        elif system:
            rep["prefix_prompt_tokens"] = await cl.prompt_tokens(system, USER_TOPICS[0])
        for conc in args.concurrency:
            n = args.requests_per_level or max(args.rounds * conc, args.rounds)
            n = min(n, MAX_REQUESTS_PER_LEVEL)
            if args.warmup:
                await cl.stream(system, "준비 요청입니다.")
            rep["levels"].append(await run_level(cl, system, conc, n, args.level_time_limit))
            if not args.json_only:
                print(f"  concurrency {conc} done", file=sys.stderr)
        return rep


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True, help="server base URL on loopback, e.g. http://127.0.0.1:8080")
    ap.add_argument("--model", help="model name (default: the first of /v1/models)")
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    ap.add_argument("--concurrency", default="1,4,8,16", help="comma-separated levels (default 1,4,8,16)")
    ap.add_argument("--requests-per-level", type=int, default=0,
                    help="requests per level (default: --rounds x concurrency)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="requests per level as a multiple of the concurrency (default 2)")
    ap.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (default 64)")
    ap.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false",
                    help="do not send ignore_eos (then outputs may be shorter than --max-tokens)")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--prefix-tokens", type=int, default=1000,
                    help="size of the shared Korean system prompt in prompt tokens (0: none; default 1000)")
    ap.add_argument("--prefix-probe", type=int, default=3,
                    help="new conversations measured behind the warm prefix (0: skip the probe)")
    ap.add_argument("--warmup", action="store_true", help="one unmeasured request before each level")
    ap.add_argument("--request-timeout", type=float, default=600.0, help="seconds per request (default 600)")
    ap.add_argument("--level-time-limit", type=float, default=900.0,
                    help="no new request starts after this many seconds in a level (default 900)")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE ('-': stdout only)")
    ap.add_argument("--seed", type=int, default=None, help="seed for the prefix tag (default: random)")
    a = ap.parse_args(argv)
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if not a.concurrency or any(c < 1 or c > MAX_LEVEL_CONCURRENCY for c in a.concurrency):
        ap.error(f"concurrency levels must be 1..{MAX_LEVEL_CONCURRENCY}")
    if a.max_tokens < 1:
        ap.error("--max-tokens must be at least 1")
    a.json_only = a.json == "-"
    if a.seed is not None:
        random.seed(a.seed)
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    rep = asyncio.run(main_async(args))
    if args.json == "-":
        json.dump(rep, sys.stdout, ensure_ascii=False, indent=1)
        print()
    else:
        print_report(rep)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(rep, f, ensure_ascii=False, indent=1)
    failed = any(l["ok"] == 0 for l in rep["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
