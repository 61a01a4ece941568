"""The served chat's API (scripts.rag_web / nanochat.serve) through FastAPI's TestClient: answers equal the chat
pipeline's, streams, 4xx with a reason for each kind of bad request, 503 + Retry-After on a full queue, a
timeout, no traceback on an internal error, and requests from many clients answered in shared batches.

    python -m pytest -q tests/test_rag_web.py
"""
import json
import threading

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402


def server_args(world, source="refrag", *extra):
    from scripts.rag_web import build_parser
    return build_parser().parse_args(["--knowledge_base", str(world["kb"]), "--source", source, "--model_tag", "tiny",
                                      "--base_dir", str(world["base"]), "--device", "cpu", "--max_tokens", "12",
                                      "--retriever_type", "simple", *extra])


@pytest.fixture(scope="module")
def refrag_server(chat_world):
    from scripts.rag_web import build_server
    app, name = build_server(server_args(chat_world, "refrag", "--batch_size", "8"))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app, name


def ask(question, **kw):
    return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": question}], **kw}


def events(response):
    out = []
    for block in response.text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def batcher_of(app):
    return app.state.batcher


def test_completion_matches_the_chat_pipeline_and_carries_sources(chat_world, refrag_server):
    client, app, name = refrag_server
    q = chat_world["questions"][0]["question"]
    r = client.post("/v1/chat/completions", json=ask(q))
    assert r.status_code == 200, r.text
    body = r.json()
    want = batcher_of(app).pipeline.answer(q, 12)
    assert body["object"] == "chat.completion" and body["model"] == name == "refrag/tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want.text}
    assert body["choices"][0]["finish_reason"] in ("stop", "length")
    assert [h["query"] for h in body["hops"]] == [h["query"] for h in want.hops] and len(body["hops"]) == 2
    docs = body["documents"]
    assert [d["n"] for d in docs] == list(range(1, len(docs) + 1)) and all(d["title"] and d["snippet"] for d in docs)
    assert [c["n"] for c in body["citations"]] == want.citations
    assert body["usage"]["completion_tokens"] == want.num_tokens > 0
    for model in ("refrag", "tiny", "refrag/tiny"):  # the served model by any of its names
        assert client.post("/v1/chat/completions", json=ask(q, model=model)).status_code == 200


def test_stream_sends_sources_first_then_the_answer_in_pieces(chat_world, refrag_server):
    client, app, _ = refrag_server
    q = chat_world["questions"][2]["question"]
    r = client.post("/v1/chat/completions", json=ask(q, stream=True, max_tokens=10))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ev = events(r)
    assert ev[-1] == "[DONE]"
    first, last = ev[0], ev[-2]
    assert first["choices"][0]["delta"]["role"] == "assistant" and first["documents"] and len(first["hops"]) == 2
    pieces = [e["choices"][0]["delta"]["content"] for e in ev[1:-2]]
    want = batcher_of(app).pipeline.answer(q, 10)
    assert "".join(pieces) == want.text == last["content"] and len(pieces) > 1
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and [c["n"] for c in last["citations"]] == want.citations


def test_health_and_models(refrag_server):
    client, _, name = refrag_server
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["model"] == name
    assert h.json()["queue"]["max"] == 64 and "served" in h.json()
    assert client.get("/v1/models").json()["data"][0]["id"] == name
    page = client.get("/")
    assert page.status_code == 200 and "refrag/tiny" in page.text and "<script" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # offline: nothing fetched from elsewhere


BAD = [  # (body, status, words in the reason)
    (b"{not json", 400, "malformed JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({}).encode(), 422, "'messages' is required"),
    (json.dumps({"messages": "hi"}).encode(), 422, "'messages' must be a list"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 422, "messages[0].content must be a string"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}).encode(), 422, "must be system, user or assistant"),
    (json.dumps({"messages": ["hi"]}).encode(), 422, "messages[0] must be an object"),
    (json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(), 400, "no user message"),
    (json.dumps(ask("   ")).encode(), 400, "the question is empty"),
    (json.dumps(ask("x" * 100_000)).encode(), 413, "100000 characters; the limit is 2000"),
    (json.dumps(ask("hi", model="gpt-4")).encode(), 404, "unknown model 'gpt-4'"),
    (json.dumps(ask("hi", model=7)).encode(), 422, "'model' must be a string"),
    (json.dumps(ask("hi", stream="yes")).encode(), 422, "'stream' must be true or false"),
    (json.dumps(ask("hi", max_tokens="5")).encode(), 422, "'max_tokens' must be an integer"),
    (json.dumps(ask("hi", max_tokens=True)).encode(), 422, "'max_tokens' must be an integer"),
    (json.dumps(ask("hi", max_tokens=0)).encode(), 422, "between 1 and 256"),
    (json.dumps(ask("hi", temperature=-1)).encode(), 422, "'temperature' must be between 0 and 2"),
    (json.dumps(ask("hi", seed=1.5)).encode(), 422, "'seed' must be an integer"),
    (json.dumps(ask("why " * 480)).encode(), 400, "longer than the model's prompt budget"),
    (json.dumps(ask("why " * 480, stream=True)).encode(), 400, "longer than the model's prompt budget"),
]


@pytest.mark.parametrize("raw,status,reason", BAD, ids=[f"{s}-{r[:24]}" for _, s, r in BAD])
def test_bad_requests_get_a_4xx_with_the_reason(refrag_server, raw, status, reason):
    client, _, _ = refrag_server
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert reason in err["message"] and err["type"] == "invalid_request_error"
    assert "Traceback" not in r.text


def test_other_routes_and_oversized_bodies(refrag_server):
    client, _, _ = refrag_server
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").json()
    assert client.get("/v1/chat/completions").status_code == 405
    r = client.post("/v1/chat/completions", content=b"x" * 1_000_001)
    assert r.status_code == 413 and "limit is 1000000" in r.json()["error"]["message"]


def test_internal_error_is_a_plain_500_and_the_server_goes_on(chat_world, refrag_server, monkeypatch):
    client, app, _ = refrag_server
    pipeline = batcher_of(app).pipeline

    def broken(*a, **k):
        raise RuntimeError("secret detail from deep inside")
    monkeypatch.setattr(pipeline, "prepare_many", broken)
    r = client.post("/v1/chat/completions", json=ask("Who founded it?"))
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "secret" not in r.text and "Traceback" not in r.text
    monkeypatch.undo()
    assert client.post("/v1/chat/completions", json=ask("Who founded it?")).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_full_queue_is_503_with_retry_after_and_a_stalled_request_times_out(chat_world):
    from scripts.rag_web import build_server
    app, _ = build_server(server_args(chat_world, "rag", "--max_queue", "1", "--timeout", "1"))
    with TestClient(app, raise_server_exceptions=False) as client:
        batcher_of(app).stop()  # nobody serves the queue now
        first = client.post("/v1/chat/completions", json=ask("Who founded it?"))
        assert first.status_code == 504 and "timed out" in first.json()["error"]["message"]
        second = client.post("/v1/chat/completions", json=ask("Who founded it?"))  # the stalled one still waits
        assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
        assert "busy" in second.json()["error"]["message"]
        assert client.get("/health").status_code == 503  # the worker is gone: not healthy


def test_concurrent_clients_share_batches_and_get_their_own_answers(chat_world, refrag_server):
    client, app, _ = refrag_server
    questions = [q["question"] for q in chat_world["questions"][:16]]
    batcher = batcher_of(app)
    before = dict(batcher.stats)
    results = [None] * len(questions)

    def one(i):
        results[i] = client.post("/v1/chat/completions", json=ask(questions[i], max_tokens=8 + i % 3))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in results)
    for i, r in enumerate(results):
        alone = batcher.pipeline.answer(questions[i], 8 + i % 3)
        assert r.json()["choices"][0]["message"]["content"] == alone.text
    assert batcher.stats["served"] - before["served"] == len(questions)
    assert batcher.stats["batches"] - before["batches"] < len(questions)  # some requests were answered together
    assert batcher.stats["largest_batch"] > 1
