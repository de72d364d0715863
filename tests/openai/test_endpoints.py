"""Liveness, readiness, Prometheus metrics and the model list."""
from conftest import parse_metrics


def test_health(server):
    status, _ = server.get("/health")
    assert status == 200


def test_ready(server):
    status, _ = server.get("/ready")
    assert status == 200


def test_metrics_is_prometheus_text(server, client, mini):
    # One request first so that the counters and histograms have something in them.
    client.chat.completions.create(
        model=mini, messages=[{"role": "user", "content": "안녕"}], max_tokens=2, temperature=0
    )
    status, body = server.get("/metrics")
    assert status == 200
    metrics = parse_metrics(body)  # raises on a malformed line
    assert metrics, "no samples in /metrics"
    assert any(line.startswith("# TYPE ") for line in body.splitlines()), "no # TYPE lines"
    names = set(metrics)
    # Histograms come as _bucket/_sum/_count with an le="+Inf" bucket.
    buckets = [n for n in names if n.endswith("_bucket")]
    assert buckets, f"no histogram in /metrics: {sorted(names)}"
    for b in buckets:
        assert any(lbl.get("le") == "+Inf" for lbl, _ in metrics[b]), f"{b} lacks le=+Inf"
        base = b[: -len("_bucket")]
        assert base + "_count" in names and base + "_sum" in names, base
    # The issue asks for these families; accept any naming that says what it is.
    lowered = " ".join(sorted(names)).lower()
    for what in ["request", "token", "first_token", "queue", "batch", "kv", "prefix"]:
        assert what in lowered, f"no metric about {what!r} in {sorted(names)}"


def test_models_list(client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert len(ids) >= 2, ids
    assert any("tiny-mini" in i for i in ids), ids
    assert any("tiny-bf16" in i for i in ids), ids
    for m in page.data:
        assert m.object == "model"
        assert isinstance(m.created, int)
        assert isinstance(m.owned_by, str)


def test_models_retrieve(client, mini):
    m = client.models.retrieve(mini)
    assert m.id == mini
