"""POST /v1/faces/query against real servers on loopback (subprocesses, transformers engine with a tiny random
FaceLLM; the query API's agent uses the rules, so the answers come from the real face tools on real photos)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest

from facellm.tools.gallery import Gallery
from facellm.tools.photos import photo
from test_serve import PHOTOS, ServerProcess, data_uri
from tiny_facellm import tiny_model

KEY = "query-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": "Bearer someone-else"}  # a second key the server accepts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("query")
    return tiny_model(root, seed=3).save_pretrained(root / "random")


@pytest.fixture(scope="module")
def gallery_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("query_gallery") / "gallery.sqlite"
    Gallery(db).enroll("Dana Whitfield", photo("astronaut"))
    return db


@pytest.fixture(scope="module")
def server(model_dir, gallery_db):
    # max-queue 0: a query that arrives while the one slot is taken must get 429 (the tests run one at a time)
    srv = ServerProcess(["--engine", "transformers", "--model", str(model_dir), "--api-key", KEY,
                         "--api-key", "someone-else", "--image-dir", str(PHOTOS), "--gallery", str(gallery_db),
                         "--max-queue", "0"])
    yield srv
    assert srv.stop() == 0


def query(server, timeout: float = 120, **body) -> httpx.Response:
    return httpx.post(server.base + "/v1/faces/query", json=body, headers=AUTH, timeout=timeout)


def test_counts_the_faces_in_a_group_photo(server):
    r = query(server, images=[data_uri(photo("group"))], question="How many faces are there?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert "6 faces" in body["answer"]
    assert body["agent_model"] == "rules" and body["path"] == "rules"
    assert body["conversation_id"].startswith("conv_")
    [image] = body["images"]
    assert image["image_id"] == "image_1" and (image["width"], image["height"]) == (1280, 886)
    faces = image["faces"]
    assert [f["id"] for f in faces] == [1, 2, 3, 4, 5, 6]
    xs = [f["box"][0] for f in faces]
    assert xs == sorted(xs)  # left to right
    assert all(len(f["kpts5"]) == 5 for f in faces)
    assert [c["name"] for c in body["tool_calls"]] == ["detect"] and body["tool_calls"][0]["ok"]
    assert {"attribute": "num_faces", "value": 6}.items() <= body["evidence"][0].items()
    assert body["grounding"]["ok"]


def test_smile_from_a_server_side_path(server):
    r = query(server, images=[str(photo("astronaut"))], question="Is the person smiling?")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"].startswith("Yes")
    assert "estimate" in body["answer"]
    [face] = body["images"][0]["faces"]
    assert face["smiling"] is True
    assert face["landmarks"], "the expression tool measured landmarks; they come back for drawing"


def test_follow_up_reuses_the_conversation(server):
    first = query(server, images=[data_uri(photo("group"))], question="How many faces are there?").json()
    cid = first["conversation_id"]
    r = query(server, conversation_id=cid, question="Who is smiling?")  # no image: the conversation's is used
    assert r.status_code == 200, r.text
    follow = r.json()
    assert follow["conversation_id"] == cid
    assert "of the 6 faces are smiling" in follow["answer"]
    assert [i["image_id"] for i in follow["images"]] == ["image_1"]
    smiling = [f["id"] for f in follow["images"][0]["faces"] if f["smiling"]]
    assert smiling and all(f"face {i}" in follow["answer"] for i in smiling)
    # a second photo joins the same conversation as image_2
    r = query(server, conversation_id=cid, images=[data_uri(photo("astronaut"))],
              question="How many faces are in image_2?")
    assert r.status_code == 200, r.text
    assert [i["image_id"] for i in r.json()["images"]] == ["image_1", "image_2"]
    assert "one face in image_2" in r.json()["answer"]


def test_streaming_sends_tool_events_then_the_answer(server):
    events = []
    with httpx.stream("POST", server.base + "/v1/faces/query", headers=AUTH, timeout=120,
                      json={"images": [str(photo("astronaut"))], "question": "Is the person smiling?",
                            "stream": True}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    kinds = [e["type"] for e in parsed]
    assert kinds[0] == "start" and kinds[-1] == "result"
    assert kinds.index("tool_call") < kinds.index("tool_result") < kinds.index("answer_delta")
    result = parsed[-1]["response"]
    assert "".join(e["text"] for e in parsed if e["type"] == "answer_delta") == result["answer"]
    assert result["answer"].startswith("Yes")
    assert parsed[0]["conversation_id"] == result["conversation_id"]


def test_gallery_identifies_the_enrolled_person_only_when_asked(server):
    r = query(server, images=[str(photo("astronaut"))], question="Who is this?", use_gallery=True)
    assert r.status_code == 200, r.text
    assert "Dana Whitfield" in r.json()["answer"]
    r = query(server, images=[str(photo("astronaut"))], question="Who is this?")
    assert r.status_code == 200, r.text
    assert "Dana Whitfield" not in r.json()["answer"]


def test_api_key_is_required(server):
    body = {"images": [str(photo("astronaut"))], "question": "How many faces?"}
    r = httpx.post(server.base + "/v1/faces/query", json=body, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(server.base + "/v1/faces/query", json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert r.status_code == 401


@pytest.mark.parametrize("body, status, words, code", [
    ({"images": ["data:image/png;base64," + base64.b64encode(b"not a picture").decode()],
      "question": "How many faces?"}, 400, "image", "invalid_image"),
    ({"images": ["/etc/passwd"], "question": "How many faces?"}, 400, "outside the folders", "invalid_image"),
    ({"images": ["https://example.com/a.jpg"], "question": "How many faces?"}, 400, "allow-listed",
     "invalid_image"),
    ({"question": "How many faces?"}, 400, "no image", "no_image"),
    ({"images": [], "question": ""}, 400, "question", "invalid_request"),
    ({"question": "Hi", "tools": []}, 400, "tools", "invalid_request"),
    ({"conversation_id": "conv_missing", "question": "And now?"}, 404, "no conversation", "not_found"),
    ({"question": "x", "use_gallery": False, "images": ["x"] * 9}, 400, "at most 8 images", "too_many_images"),
])
def test_bad_requests_are_refused_clearly(server, body, status, words, code):
    r = query(server, timeout=30, **body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert words in error["message"] and error["code"] == code and set(error) == {"message", "type", "param", "code"}


def test_a_conversation_belongs_to_the_key_that_started_it(server):
    r = query(server, images=[str(photo("group"))], question="How many faces are there?")
    assert r.status_code == 200, r.text
    cid = r.json()["conversation_id"]
    follow = {"conversation_id": cid, "question": "How many faces are there?"}
    for stream in (False, True):  # another key: the conversation does not exist for it, streamed or not
        other = httpx.post(server.base + "/v1/faces/query", json={**follow, "stream": stream}, headers=OTHER,
                           timeout=60)
        assert other.status_code == 404, other.text
        assert other.json()["error"]["code"] == "not_found" and "faces" not in other.text
    # exactly what an id that never existed gets: nothing confirms that the conversation is there
    missing = httpx.post(server.base + "/v1/faces/query", headers=OTHER, timeout=60,
                         json={**follow, "conversation_id": "conv_0123456789abcdef"}).json()
    assert other.json()["error"]["message"].replace(cid, "ID") == missing["error"]["message"].replace(
        "conv_0123456789abcdef", "ID")
    # the other key's own conversations work, and the owner's conversation is still there for the owner
    own = httpx.post(server.base + "/v1/faces/query", headers=OTHER, timeout=120,
                     json={"images": [str(photo("astronaut"))], "question": "How many faces are there?"})
    assert own.status_code == 200 and own.json()["conversation_id"] != cid
    again = query(server, **follow)
    assert again.status_code == 200 and "6 faces" in again.json()["answer"], again.text


def test_busy_server_answers_429(server):
    # the tiny random model rambles until max_tokens: this stream holds the one slot while the query arrives
    chat = {"messages": [{"role": "user", "content": "Describe the image."}], "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", server.base + "/v1/chat/completions", json=chat, headers=AUTH, timeout=60) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(lines), next(lines)  # admitted and generating
        r = query(server, timeout=30, images=[str(photo("astronaut"))], question="How many faces?")
        assert next(lines)  # still generating after the query was refused
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limit_exceeded" and int(r.headers["retry-after"]) >= 1


def test_schema_is_in_openapi(server):
    spec = httpx.get(server.base + "/openapi.json", timeout=30).json()
    op = spec["paths"]["/v1/faces/query"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueryResponse")
    schemas = spec["components"]["schemas"]
    request_fields = set(schemas["QueryRequest"]["properties"])
    assert {"question", "images", "conversation_id", "use_gallery", "stream"} <= request_fields
    assert {"answer", "images", "tool_calls", "evidence", "grounding"} <= set(schemas["QueryResponse"]["properties"])
    assert "FaceResult" in schemas and "box" in schemas["FaceResult"]["properties"]


def test_timeout_answers_504(model_dir):
    srv = ServerProcess(["--engine", "transformers", "--model", str(model_dir), "--timeout", "0.05"])
    try:  # the face models load on the first query: far longer than 50 ms
        r = httpx.post(srv.base + "/v1/faces/query", json={"images": [data_uri(photo("group"))],
                                                           "question": "How old does each person look?"}, timeout=60)
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "timeout"
    finally:
        assert srv.stop() == 0


def test_engine_query_model_uses_the_served_facellm(model_dir):
    srv = ServerProcess(["--engine", "transformers", "--model", str(model_dir), "--query-model", "engine"])
    try:
        cfg = httpx.get(srv.base + "/web/config.json", timeout=30).json()
        assert cfg["query_model"] == "engine"
        # rules_first: a question the rules recognise skips the model's tool choice (fast, and right even with
        # this random tiny model); the answer still comes from the tools
        r = httpx.post(srv.base + "/v1/faces/query", timeout=120,
                       json={"images": [data_uri(photo("group"))], "question": "How many faces are there?"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["agent_model"] == "engine" and "6 faces" in body["answer"]
        # a question no rule knows goes to the model (the engine's own FaceLLM, through engine.generate)
        r = httpx.post(srv.base + "/v1/faces/query", timeout=120,
                       json={"conversation_id": body["conversation_id"], "question": "Write a haiku about it."})
        assert r.status_code == 200, r.text
        asked = r.json()
        assert asked["path"] in ("model", "none") and asked["stop_reason"] != "no_model"
        assert asked["timings_s"]["model"] > 0
    finally:
        assert srv.stop() == 0


def test_engine_query_model_on_both_engines():
    from types import SimpleNamespace

    from facellm.serve.query import QueryService
    from facellm.serve.settings import ServeSettings

    # the agent's model turns go through engine.generate, so any serving engine will do (vLLM included);
    # tests/test_query_engine.py answers real queries through it on both engines
    for name in ("transformers", "vllm"):
        service = QueryService(SimpleNamespace(name=name, generate=lambda *a, **k: None),
                               ServeSettings(query_model="engine"))
        assert service.mode == "engine"
        service.close()
    with pytest.raises(ValueError, match="generates"):
        QueryService(SimpleNamespace(name="vllm"), ServeSettings(query_model="engine"))
    with pytest.raises(ValueError, match="query_model"):
        ServeSettings(query_model="gpt")
    with pytest.raises(ValueError, match="does not exist"):
        ServeSettings(gallery="/nonexistent/gallery.sqlite")
