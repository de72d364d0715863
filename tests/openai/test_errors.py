"""Bad requests get the right HTTP status and OpenAI's error JSON:
{"error": {"message": str, "type": str, "param": str|null, "code": str|null}}."""
import json
import urllib.error
import urllib.request

import openai
import pytest

HELLO = [{"role": "user", "content": "안녕하세요"}]


def _post_raw(server, path, body: bytes, content_type="application/json"):
    req = urllib.request.Request(
        server.base_url + path, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def assert_openai_error(body, status=None) -> dict:
    """The body (a str or the client's parsed body) is OpenAI-shaped; returns the inner object."""
    if isinstance(body, str):
        body = json.loads(body)
    assert isinstance(body, dict) and "error" in body, body
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        assert key in err, f"error object lacks {key!r}: {err}"
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["type"], err
    assert err["param"] is None or isinstance(err["param"], str), err
    assert err["code"] is None or isinstance(err["code"], (str, int)), err
    return err


def _body(exc: openai.APIStatusError) -> dict:
    # The client strips the "error" wrapper into exc.body; re-read the raw response instead.
    return exc.response.json()


def test_unknown_model_chat_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=2)
    err = assert_openai_error(_body(ei.value))
    assert err["code"] == "model_not_found"
    assert "no-such-model" in err["message"]


def test_unknown_model_completions_404(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.completions.create(model="no-such-model", prompt="안녕", max_tokens=2)
    assert assert_openai_error(_body(ei.value))["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_malformed_json_400(server, path):
    status, body = _post_raw(server, path, b'{"model": "x", "messages": [')
    assert status == 400, (status, body)
    assert_openai_error(body)


@pytest.mark.parametrize(
    "payload",
    [
        {"messages": HELLO},  # no model
        {"model": "@mini", "messages": "안녕"},  # messages not an array
        {"model": "@mini"},  # no messages
        {"model": "@mini", "messages": [{"role": "wizard", "content": "안녕"}]},
        {"model": "@mini", "messages": HELLO, "temperature": "hot"},
        {"model": "@mini", "messages": HELLO, "n": 0},
        {"model": "@mini", "messages": HELLO, "temperature": -1},
    ],
    ids=["no-model", "messages-string", "no-messages", "bad-role", "temperature-string", "n-0", "temperature-negative"],
)
def test_invalid_chat_request_400(server, mini, payload):
    payload = {k: (mini if v == "@mini" else v) for k, v in payload.items()}
    status, body = _post_raw(server, "/v1/chat/completions", json.dumps(payload).encode())
    assert status == 400, f"expected 400 like OpenAI, got {status}: {body}"
    assert_openai_error(body)


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_max_tokens_not_positive_400(client, mini, max_tokens):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=mini, messages=HELLO, max_tokens=max_tokens)
    err = assert_openai_error(_body(ei.value))
    assert err["param"] in ("max_tokens", None), err
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=mini, prompt="안녕", max_tokens=max_tokens)
    assert_openai_error(_body(ei.value))


def test_max_completion_tokens_zero_400(client, mini):
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=mini, messages=HELLO, max_completion_tokens=0)
    assert_openai_error(_body(ei.value))


def test_prompt_over_context_window_400(client, mini):
    long = "회의록을 요약해 주세요. " * 400  # far past tiny-mini's 256-token window
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(model=mini, messages=[{"role": "user", "content": long}], max_tokens=4)
    err = assert_openai_error(_body(ei.value))
    msg = err["message"].lower()
    assert "context" in msg and "token" in msg, f"message does not say what is wrong: {err['message']!r}"
    assert any(ch.isdigit() for ch in msg), f"message gives no token counts: {err['message']!r}"
    # The completions endpoint, with a prompt given as token ids, too.
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=mini, prompt=[5] * 1000, max_tokens=4)
    assert_openai_error(_body(ei.value))


def test_prompt_plus_max_tokens_over_window(client, mini):
    # The prompt fits but prompt + max_tokens does not: either refused with 400 or cut at the
    # window with finish_reason "length"; never an error mid-stream or a 500.
    try:
        r = client.chat.completions.create(
            model=mini, messages=HELLO, max_tokens=10_000, temperature=0, extra_body={"ignore_eos": True}
        )
    except openai.BadRequestError as e:
        assert_openai_error(_body(e))
        return
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens <= 256


def test_token_id_out_of_vocab_400(client, mini):
    with pytest.raises(openai.BadRequestError) as ei:
        client.completions.create(model=mini, prompt=[0, 5, 999_999], max_tokens=2)
    assert_openai_error(_body(ei.value))


def test_unknown_route_404(server):
    status, body = _post_raw(server, "/v1/no-such-endpoint", b"{}")
    assert status == 404
