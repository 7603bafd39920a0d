"""/v1/faces/query with ``--query-model engine``: the agent's model turns go through the serving engine's own
generation path (``serve.agent_model.EngineChatModel``: LangChain messages -> the server's ``PreparedPrompt`` ->
``engine.generate``), the same on the transformers and the vLLM engine.

A tiny FaceLLM is *taught* on the very prompts that path builds for the agent (captured from the query service
itself, its model's generation replaced by a script only while capturing) to call ``detect`` for questions no
rule recognises and then to answer from the tool's result. Real servers on loopback then answer
/v1/faces/query with it: ``path == "model"``, the model's own tool call, its answer, the identity policy on it.
The transformers engine runs in the default test run; the vLLM engine test is slow (vLLM starts in 80-150 s on
a CPU).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from facellm.configuration import FaceLLMConfig
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.serve.agent_model import Completion, EngineChatModel, ModelTurns
from facellm.serve.engines import TransformersEngine
from facellm.serve.images import resolve_image
from facellm.serve.query import QueryService
from facellm.serve.settings import ServeSettings
from facellm.toolcall import DEFAULT_SYSTEM, tools_section
from facellm.tools.photos import photo
from facellm.tools.registry import REGISTRY
from pydantic import Field
from test_serve import ServerProcess, data_uri
from tiny_facellm import TINY_REGION, WORDS, teach, tiny_tokenizer, tiny_tower_folder

# one conversation about the astronaut photo: questions no rule recognises -> the tool the model calls, and its
# answer from the tool's result (the second names someone no gallery matched: the identity policy must screen it)
TAUGHT = [("Write a haiku about it.", "detect", "I found one face in image_1."),
          ("Tell me a story about it.", "pose", "This is Grace Hopper, facing the camera.")]


def call(tool: str) -> str:
    return f'<tool_call>\n{{"name": "{tool}", "arguments": {{"image": "image_1"}}}}\n</tool_call>'



# ------------------------------------------------------------------ the taught model


def agent_tokenizer():
    """A byte-level BPE (1000 tokens) trained on the agent's system turn (its tools section is ~4 600
    characters): ~1 150 tokens for it instead of ~3 900 with the 300-token tokenizer of tiny_facellm, so a
    taught agent prompt is ~1 400 tokens (fast to train, and within the tiny LM's positions for vLLM)."""
    system = DEFAULT_SYSTEM + "\n\n" + tools_section([s.openai() for s in REGISTRY.values()])
    texts = [system, *WORDS, *(q for q, _, _ in TAUGHT), *(a for *_, a in TAUGHT), *(call(t) for _, t, _ in TAUGHT),
             "Images in this conversation: image_1.",
             '<tool_response>\n{"num_faces":1,"faces":[{"face_id":1,"position":"top"}]}\n</tool_response>']
    return tiny_tokenizer(texts, vocab_size=1000)


def untrained_model(root: Path, hidden: int) -> FaceLLMForConditionalGeneration:
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = root / f"agent-llama-{hidden}"
    torch.manual_seed(0)
    tok = agent_tokenizer()
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=True)).save_pretrained(lm)
    tok.save_pretrained(lm)
    torch.manual_seed(0)
    return FaceLLMForConditionalGeneration(FaceLLMConfig(vision={"name": str(tiny_tower_folder(root))},
                                                         lm_name_or_path=str(lm), freeze_lm=False, **TINY_REGION))


class Scripted(EngineChatModel):
    """The engine path with the generation replaced by a script: records each ``PreparedPrompt`` it would
    send to the engine (only to capture the prompts the model is taught on)."""

    script: list = Field(default_factory=list)
    seen: list = Field(default_factory=list)

    async def complete(self, prompt, params, probe_tokens=None) -> Completion:
        self.seen.append(prompt)
        return Completion(self.script.pop(0), 0, 0, "stop")


def agent_prompts(model: FaceLLMForConditionalGeneration) -> list[tuple[object, str]]:
    """(prompt, answer) for each model turn of the taught conversation, as the query service's agent builds them."""
    engine = TransformersEngine("unused")
    engine.model = model
    service = QueryService(engine, ServeSettings(query_model="engine"))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    script = [text for _, tool, answer in TAUGHT for text in (call(tool), answer)]
    scripted = Scripted(engine=engine, loop=loop, settings=service.settings, script=list(script))
    service._model = lambda turns, loop_: scripted.model_copy(update={"turns": turns})
    try:
        conv = service.new_conversation(False, loop=loop)
        images = [resolve_image(data_uri(photo("astronaut")), service.settings)]  # as the server decodes it
        for question, _, _ in TAUGHT:
            result = service.ask(conv, question, images)
            images = []
            assert result["path"] == "model" and result["answer_source"] in ("model", "policy"), result
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        service.close()
    assert len(scripted.seen) == len(script)
    return list(zip(scripted.seen, script))


def build_agent_model(root: Path, hidden: int = 32, steps: int = 150) -> Path:
    """A tiny FaceLLM taught the agent turns of TAUGHT (float32); saved with its LM in lm/."""
    model = untrained_model(root, hidden)
    batches = [model.processor(p.messages + [{"role": "assistant", "content": answer}], analyses=p.analyses)
               for p, answer in agent_prompts(model)]
    return teach(model, batches, steps, hidden, root / "taught")


# ------------------------------------------------------------------ the checks, the same for both engines


def query(srv: ServerProcess, **body) -> dict:
    r = httpx.post(srv.base + "/v1/faces/query", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(srv: ServerProcess, **body) -> list[dict]:
    events = []
    with httpx.stream("POST", srv.base + "/v1/faces/query", json={**body, "stream": True}, timeout=300) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                events.append(json.loads(line[6:]))
    return events


def check_model_path(srv: ServerProcess, engine: str) -> None:
    assert httpx.get(srv.base + "/health", timeout=10).json()["engine"] == engine
    # a question no rule recognises: the served model chose the tool, and answered from its result
    body = query(srv, images=[data_uri(photo("astronaut"))], question=TAUGHT[0][0])
    assert body["agent_model"] == "engine" and body["path"] == "model", body
    assert [(c["name"], c["arguments"], c["origin"], c["ok"]) for c in body["tool_calls"]] == \
        [("detect", {"image": "image_1"}, "model", True)]
    assert body["answer"] == TAUGHT[0][2] and body["answer_source"] == "model"
    assert body["stop_reason"] == "answered" and body["grounding"]["ok"] and body["timings_s"]["model"] > 0
    assert any(e["attribute"] == "num_faces" and e["value"] == 1 for e in body["evidence"])
    # a follow-up, streamed as the chat page asks: the model names someone no gallery matched -> screened
    cid = body["conversation_id"]
    events = streamed(srv, conversation_id=cid, question=TAUGHT[1][0])
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [(c["name"], c["origin"]) for c in calls] == [("pose", "model")]
    result = events[-1]["response"]
    assert events[-1]["type"] == "result" and result["path"] == "model" and result["answer_source"] == "policy"
    said = "".join(e["text"] for e in events if e["type"] == "answer_delta")
    assert said == result["answer"] and "Hopper" not in json.dumps(events)
    assert any(n.startswith("identity:") for n in result["notes"])
    # rules_first: a question the rules recognise skips the model
    rules = query(srv, conversation_id=cid, question="How many faces are there?")
    assert rules["path"] == "rules" and rules["stop_reason"] == "no_model" and "one face" in rules["answer"]
    # the model turns count in the server's token metrics, as chat completions do
    metrics = httpx.get(srv.base + "/metrics", timeout=10).text
    completion = [ln for ln in metrics.splitlines() if ln.startswith("facellm_completion_tokens_total")]
    assert completion and float(completion[0].split()[-1]) > 0


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory) -> Path:
    return build_agent_model(tmp_path_factory.mktemp("query_engine"))


def test_transformers_engine_agent_answers_through_the_engine(taught_dir):
    srv = ServerProcess(["--engine", "transformers", "--model", str(taught_dir), "--query-model", "engine",
                         "--dtype", "float32"])
    try:
        check_model_path(srv, "transformers")
    finally:
        assert srv.stop() == 0


def test_transformers_engine_prefills_the_tools_section_once(taught_dir):
    """The agent's prompts offer the tools: the engine keeps the system turn's KV cache (the tools section) and
    prefills only the rest; the tokens are those of a full prefill."""
    import dataclasses

    from facellm.serve.prompt import SamplingSettings

    async def tokens(engine, prompt) -> list[int]:
        return [i async for d in engine.generate(prompt, SamplingSettings(max_tokens=40)) for i in d.token_ids]

    async def main():
        engine = TransformersEngine(taught_dir, dtype="float32")
        await engine.start()
        try:
            turns = agent_prompts(engine.model)
            for prompt, answer in turns:
                cached = await tokens(engine, prompt)
                assert engine._prefix is not None and len(engine._prefix[0]) < len(engine.prompt_token_ids(prompt))
                full = await tokens(engine, dataclasses.replace(prompt, tools=None))  # no tools: no cache
                assert cached == full and engine.tokenizer.decode(cached, skip_special_tokens=True) == answer
        finally:
            await engine.shutdown()

    asyncio.run(main())


@pytest.mark.slow
def test_vllm_engine_agent_answers_through_the_engine(tmp_path_factory):
    pytest.importorskip("vllm")
    root = tmp_path_factory.mktemp("query_engine_vllm")
    taught = build_agent_model(root, hidden=128, steps=200)  # head size 32: vLLM's CPU attention takes it
    srv = ServerProcess(["--engine", "vllm", "--model", str(taught), "--query-model", "engine", "--dtype", "float32",
                         "--kv-cache-gib", "1", "--max-concurrency", "4"], startup=400,
                        env={"VLLM_CACHE_ROOT": str(root / "vllm-cache")})
    try:
        check_model_path(srv, "vllm")
    finally:
        assert srv.stop() == 0


# ------------------------------------------------------------------ the prompt (no model)


def test_tool_results_are_rendered_as_in_training():
    """The engine path renders a conversation with tool calls and results exactly as the training traces and the
    in-process FaceLLMChatModel do (facellm.toolcall.render_chatml): each result wrapped in <tool_response> once,
    consecutive results in one tool turn."""
    from facellm.serve.prompt import prepare
    from facellm.serve.protocol import ChatCompletionRequest
    from facellm.toolcall import CHAT_TEMPLATE, render_chatml

    tools = [REGISTRY["detect"].openai(), REGISTRY["pose"].openai()]
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": {"image": "image_1"}}}
             for i, n in enumerate(("detect", "pose"))]
    msgs = [{"role": "system", "content": DEFAULT_SYSTEM}, {"role": "user", "content": "Find the faces."},
            {"role": "assistant", "content": "", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "call_0", "content": '{"num_faces":1}'},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"yaw":-1}'}]
    prompt = prepare(ChatCompletionRequest(messages=msgs, tools=tools), ServeSettings())
    text = agent_tokenizer().apply_chat_template(prompt.text_messages(), chat_template=CHAT_TEMPLATE, tokenize=False,
                                                 add_generation_prompt=True)
    assert text == render_chatml(msgs, tools, add_generation_prompt=True)
    assert text.count("<tool_response>") == 2


# ------------------------------------------------------------------ the turns' deadline and stop (no model)


def test_a_turn_past_the_deadline_is_cancelled_on_the_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cancelled = threading.Event()

    async def forever():
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    try:
        turns = ModelTurns()
        end = time.monotonic() + 0.3
        turns.begin(lambda: end - time.monotonic())
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            turns.run(forever(), loop)
        assert time.monotonic() - t0 < 5 and cancelled.wait(5)  # the engine's generator is closed with it
        # stop(): the running turn ends at once, later ones are refused; a new question starts afresh
        turns.begin()
        cancelled.clear()
        threading.Timer(0.2, turns.stop).start()
        with pytest.raises(TimeoutError, match="stopped"):
            turns.run(forever(), loop)
        assert cancelled.wait(5)
        with pytest.raises(TimeoutError, match="stopped"):
            turns.run(forever(), loop)
        turns.begin()

        async def answer():
            return 42

        assert turns.run(answer(), loop) == 42
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
