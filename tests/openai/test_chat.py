"""POST /v1/chat/completions through the official client: non-streaming and streaming, usage,
sampling parameters, n, stop strings, seeds and logprobs."""
import pytest

HELLO = [{"role": "user", "content": "안녕하세요"}]
# Generation past the end-of-sequence ids, so that lengths are exact on random weights.
NO_EOS = {"ignore_eos": True}


def _stream_text(stream):
    """Collect a streamed chat completion: (text per choice index, finish_reason per index,
    usage chunk or None, all chunks)."""
    texts, finish, usage, chunks = {}, {}, None, []
    for ch in stream:
        chunks.append(ch)
        assert ch.object == "chat.completion.chunk"
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            if c.delta.content:
                texts[c.index] = texts.get(c.index, "") + c.delta.content
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    return texts, finish, usage, chunks


def test_chat_non_streaming(client, mini, render):
    r = client.chat.completions.create(model=mini, messages=HELLO, max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    assert r.id and isinstance(r.created, int)
    assert r.model == mini
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str)
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens == len(render("mini", HELLO)), "prompt not rendered as the chat template"
    assert 0 <= u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    if c.finish_reason == "length":
        assert u.completion_tokens == 8


def test_chat_streaming_matches_non_streaming(client, mini):
    kw = dict(model=mini, messages=HELLO, max_tokens=12, temperature=0, extra_body=NO_EOS)
    full = client.chat.completions.create(**kw)
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw)
    texts, finish, usage, chunks = _stream_text(stream)
    assert texts.get(0, "") == full.choices[0].message.content
    assert finish == {0: "length"}
    # The first chunk carries the role; every chunk has the same id.
    first_delta = next(c for ch in chunks for c in ch.choices)
    assert first_delta.delta.role == "assistant"
    assert len({ch.id for ch in chunks}) == 1
    # include_usage: a last chunk with empty choices and the usage.
    assert usage is not None, "no usage chunk with stream_options.include_usage"
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens == full.usage.prompt_tokens
    assert usage.completion_tokens == full.usage.completion_tokens == 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streaming_without_usage(client, mini):
    stream = client.chat.completions.create(model=mini, messages=HELLO, max_tokens=4, temperature=0, stream=True)
    texts, finish, usage, chunks = _stream_text(stream)
    assert usage is None, "usage sent although stream_options.include_usage was not set"
    assert 0 in finish


def test_chat_content_parts_and_system(client, mini, render):
    parts = [
        {"role": "system", "content": "짧게 답하세요."},
        {"role": "user", "content": [{"type": "text", "text": "안녕"}, {"type": "text", "text": "하세요"}]},
    ]
    flat = [
        {"role": "system", "content": "짧게 답하세요."},
        {"role": "user", "content": "안녕하세요"},
    ]
    r = client.chat.completions.create(model=mini, messages=parts, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens == len(render("mini", flat))


def test_chat_max_completion_tokens(client, mini):
    r = client.chat.completions.create(
        model=mini, messages=HELLO, max_completion_tokens=5, temperature=0, extra_body=NO_EOS
    )
    assert r.usage.completion_tokens == 5
    assert r.choices[0].finish_reason == "length"


def test_chat_sampling_parameters_accepted(client, mini):
    r = client.chat.completions.create(
        model=mini,
        messages=HELLO,
        max_tokens=4,
        temperature=0.7,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        seed=7,
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert r.choices[0].message.role == "assistant"


def test_chat_n_2(client, mini):
    r = client.chat.completions.create(
        model=mini, messages=HELLO, max_tokens=6, temperature=1.0, seed=3, n=2, extra_body=NO_EOS
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model=mini, messages=HELLO, max_tokens=6, temperature=1.0, seed=3, n=2,
        stream=True, stream_options={"include_usage": True}, extra_body=NO_EOS,
    )
    texts, finish, usage, _ = _stream_text(stream)
    assert set(finish) == {0, 1}
    assert usage.completion_tokens == 12
    # Same seed, same request: the streamed choices equal the non-streamed ones.
    assert [texts.get(i, "") for i in (0, 1)] == [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]


def test_chat_seed_reproducible(client, mini):
    kw = dict(model=mini, messages=HELLO, max_tokens=16, temperature=1.0, top_p=1.0, extra_body=NO_EOS)
    a = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kw).choices[0].message.content
    assert a == b, "same seed gave different text"
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert others - {a}, "three other seeds all gave the same text as seed 1234"


def test_chat_stop_string(client, mini):
    kw = dict(model=mini, messages=HELLO, max_tokens=24, temperature=0, extra_body=NO_EOS)
    full = client.chat.completions.create(**kw).choices[0].message.content
    if len(full) < 6:
        pytest.skip(f"greedy output too short to cut: {full!r}")
    # A stop string taken from the middle of the greedy output: the answer ends just before its
    # first occurrence, the stop string itself is not returned.
    mid = len(full) // 2
    while mid < len(full) - 2 and "\ufffd" in full[mid : mid + 2]:
        mid += 1
    stop = full[mid : mid + 2]
    if "\ufffd" in stop or not stop.strip():
        pytest.skip(f"no clean stop string in {full!r}")
    expect = full[: full.index(stop)]
    r = client.chat.completions.create(stop=[stop, "절대안나오는문자열"], **kw)
    assert r.choices[0].message.content == expect
    assert r.choices[0].finish_reason == "stop"
    # Streaming never leaks a prefix of the stop string.
    stream = client.chat.completions.create(stop=stop, stream=True, **kw)
    texts, finish, _, _ = _stream_text(stream)
    assert texts.get(0, "") == expect
    assert finish[0] == "stop"


def test_chat_logprobs(client, mini):
    r = client.chat.completions.create(
        model=mini, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3, extra_body=NO_EOS
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert len(lp.content) == 4
    for t in lp.content:
        assert t.logprob <= 0.0
        assert len(t.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert t.logprob == pytest.approx(max(x.logprob for x in t.top_logprobs), abs=1e-4)
    joined = "".join(t.token for t in lp.content)
    if "\ufffd" not in joined:
        assert joined == r.choices[0].message.content


def test_prefix_cache_shared_system_prompt(server, client, mini):
    """A new conversation behind the same system prompt reuses the cached prefix: reported in
    usage.prompt_tokens_details.cached_tokens and in mideum_prefix_cache_hit_tokens_total."""
    from conftest import parse_metrics

    def hits():
        _, body = server.get("/metrics")
        return sum(v for lbl, v in parse_metrics(body).get("mideum_prefix_cache_hit_tokens_total", [])
                   if lbl.get("model") in (None, mini))

    system = {"role": "system", "content": "당신은 회계 부서의 도우미입니다. 숫자는 정확히 쓰세요. " * 3}
    first = client.chat.completions.create(
        model=mini, messages=[system, {"role": "user", "content": "첫 질문입니다"}], max_tokens=2, temperature=0)
    h0 = hits()
    second = client.chat.completions.create(
        model=mini, messages=[system, {"role": "user", "content": "전혀 다른 질문"}], max_tokens=2, temperature=0)
    gained = hits() - h0
    cached = second.usage.prompt_tokens_details.cached_tokens if second.usage.prompt_tokens_details else None
    # The system part is most of the prompt; block granularity may leave the tail uncached.
    assert cached is not None and cached >= first.usage.prompt_tokens // 2, (cached, first.usage.prompt_tokens)
    assert cached < second.usage.prompt_tokens, "the whole prompt cannot be cached: the user turn is new"
    assert gained >= cached // 2, (gained, cached)


def test_chat_logprobs_streaming(client, mini):
    kw = dict(model=mini, messages=HELLO, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2, extra_body=NO_EOS)
    full = client.chat.completions.create(**kw).choices[0].logprobs.content
    streamed = []
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            if c.logprobs and c.logprobs.content:
                streamed.extend(c.logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in full]
    assert [round(t.logprob, 4) for t in streamed] == [round(t.logprob, 4) for t in full]
