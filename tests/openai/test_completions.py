"""POST /v1/completions: prompt as text and as token ids, echo, logprobs, streaming."""
import json
import subprocess

import pytest

NO_EOS = {"ignore_eos": True}
PROMPT = "오늘 회의는"


def test_completion_string_prompt(client, mini):
    r = client.completions.create(model=mini, prompt=PROMPT, max_tokens=6, temperature=0, extra_body=NO_EOS)
    assert r.object == "text_completion"
    assert r.model == mini
    assert len(r.choices) == 1
    c = r.choices[0]
    assert c.index == 0 and isinstance(c.text, str)
    assert c.finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.usage.prompt_tokens >= 2
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_token_array_prompt_equals_text(client, mini):
    # echo + logprobs=0 gives the prompt's tokens as the server split them; sending those ids
    # back as a token-array prompt must give the same continuation.
    kw = dict(model=mini, max_tokens=6, temperature=0, extra_body=NO_EOS)
    by_text = client.completions.create(prompt=PROMPT, **kw)
    ids = _prompt_ids(client, mini, PROMPT)
    assert len(ids) == by_text.usage.prompt_tokens
    by_ids = client.completions.create(prompt=ids, **kw)
    assert by_ids.usage.prompt_tokens == len(ids)
    assert by_ids.choices[0].text == by_text.choices[0].text


def _prompt_ids(client, model, text):
    """The ids a completion prompt is made of: the CLI tokenizer on the same tokenizer files,
    plus BOS, as `tokenizer(text)` gives (this tokenizer adds BOS)."""
    from conftest import MODEL_DIRS, mideum_bin

    out = subprocess.run(
        [str(mideum_bin()), "tokenize", "-m", str(MODEL_DIRS["mini"]), "--text", text, "--json"],
        capture_output=True, timeout=60, check=True,
    )
    return [0] + json.loads(out.stdout)["ids"]


def test_completion_echo_logprobs(client, mini):
    r = client.completions.create(
        model=mini, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2, extra_body=NO_EOS
    )
    c = r.choices[0]
    assert c.text.startswith(PROMPT), c.text
    lp = c.logprobs
    assert lp is not None
    n_prompt = r.usage.prompt_tokens
    n = n_prompt + 4
    # Echo covers the prompt tokens (BOS included when the server adds it) and the completion.
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == n, (len(lp.tokens), n)
    assert lp.token_logprobs[0] is None, "the first prompt token has no log-probability"
    assert all(x is not None and x <= 0.0 for x in lp.token_logprobs[1:])
    assert lp.top_logprobs[0] is None
    for top in lp.top_logprobs[1:]:
        assert 1 <= len(top) <= 3  # logprobs=2 alternatives, plus the chosen token if not among them
    # Greedy: every generated token is the best alternative.
    for i in range(n_prompt, n):
        assert lp.token_logprobs[i] == pytest.approx(max(lp.top_logprobs[i].values()), abs=1e-4)
    # text_offset: where each token starts in the returned text, in characters.
    offs = lp.text_offset
    assert offs == sorted(offs), offs
    assert all(0 <= o <= len(c.text) for o in offs), (offs, len(c.text))


def test_completion_logprobs_without_echo(client, mini):
    r = client.completions.create(model=mini, prompt=PROMPT, max_tokens=3, temperature=0, logprobs=1, extra_body=NO_EOS)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 and len(lp.token_logprobs) == 3
    assert all(x <= 0.0 for x in lp.token_logprobs)


def test_completion_echo_without_logprobs(client, mini):
    r = client.completions.create(model=mini, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, extra_body=NO_EOS)
    plain = client.completions.create(model=mini, prompt=PROMPT, max_tokens=3, temperature=0, extra_body=NO_EOS)
    assert r.choices[0].text == PROMPT + plain.choices[0].text


def test_completion_streaming(client, mini):
    kw = dict(model=mini, prompt=PROMPT, max_tokens=8, temperature=0, extra_body=NO_EOS)
    full = client.completions.create(**kw)
    text, finish, usage, token_chunks = "", None, None, 0
    for ch in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if ch.usage is not None:
            usage = ch.usage
        for c in ch.choices:
            text += c.text
            finish = c.finish_reason or finish
            token_chunks += c.finish_reason is None
    assert text == full.choices[0].text
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 8
    # One chunk per token as it is made, even when its text is held back (a partial character).
    assert token_chunks == 8


def test_completion_seed_reproducible(client, gguf):
    kw = dict(model=gguf, prompt=PROMPT, max_tokens=16, temperature=1.0, top_p=1.0, extra_body=NO_EOS)
    a = client.completions.create(seed=99, **kw).choices[0].text
    assert client.completions.create(seed=99, **kw).choices[0].text == a
    assert {client.completions.create(seed=s, **kw).choices[0].text for s in (5, 6, 7)} - {a}
