#!/usr/bin/env python3
"""N new conversations arriving at once behind one never-seen prefix (users starting together
after a deploy): per request, the latency of a 1-token completion (its time to first token),
and the prompt tokens the server computed for all of them (from mideum's /metrics).

    python3 bench/cold_prefix.py URL N REPS    # REPS Korean sentences of prefix (~30 tokens each)

Only for a local mideum serve (reads mideum_prompt_tokens_total)."""
import json, random, sys, threading, time, urllib.request
url = sys.argv[1]; n = int(sys.argv[2]); reps = int(sys.argv[3])
S = ["당신은 기업 고객을 돕는 업무 도우미입니다.", "답변은 정확하고 간결한 한국어로 작성합니다.",
     "사내 규정과 계약서를 요약할 때에는 원문의 숫자와 날짜를 그대로 유지합니다.",
     "개인정보는 요청받더라도 출력하지 않습니다."]
tag = f"{random.randrange(16**8):08x}"
prefix = f"[{tag}] " + " ".join(f"{i}. {S[i % 4]}" for i in range(reps))
def metric(name):
    t = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith(name))
model = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["id"]
res = [None] * n
def go(i):
    body = {"model": model, "prompt": prefix + f"\n질문 {i}: 사용자 {i}번의 요청을 처리해 주세요.",
            "max_tokens": 1, "temperature": 0}
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    r = json.loads(urllib.request.urlopen(req, timeout=1200).read())
    res[i] = (time.perf_counter() - t0, r["usage"]["prompt_tokens"])
p0 = metric("mideum_prompt_tokens_total")
t0 = time.perf_counter()
th = [threading.Thread(target=go, args=(i,)) for i in range(n)]
[t.start() for t in th]; [t.join() for t in th]
wall = time.perf_counter() - t0
lat = sorted(r[0] for r in res)
print(json.dumps({"prompt_tokens_each": [r[1] for r in res], "ttft_s": [round(x, 2) for x in lat],
      "ttft_median_s": round(lat[len(lat)//2], 2), "wall_s": round(wall, 2),
      "prompt_tokens_computed": metric("mideum_prompt_tokens_total") - p0}))
