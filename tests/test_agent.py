"""The face agent on real photos with the real face tools and a real SQLite gallery.

The model's *choices* come from a scripted LangChain chat model (it replays fixed AIMessages with tool calls)
so the loop's mechanics are tested independently of how well the current default model is trained; every tool
call runs the real tool on the real photo.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from PIL import Image, ImageOps
from pydantic import Field

from facellm.agent import AgentConfig, FaceAgent, langchain_tools
from facellm.agent.chat_model import FaceLLMChatModel, message_from_text, to_openai_messages
from facellm.agent.cli import add_parser, add_agent_arguments, cmd_ask_agent, cmd_chat
from facellm.tools.gallery import Gallery
from facellm.tools.photos import photo
from facellm.tools.registry import TOOL_NAMES, FaceArgs, ImageStore, ToolSpec


class Scripted(BaseChatModel):
    """Replays fixed AIMessages (the model's choices); records every prompt it was given."""

    script: list = Field(default_factory=list)
    prompts: list = Field(default_factory=list)
    tools: list = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        self.tools = list(tools)
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        self.prompts.append(list(messages))
        msg = self.script.pop(0) if self.script else AIMessage(content="I have nothing more to add.")
        return ChatResult(generations=[ChatGeneration(message=msg)])


def call(name: str, **args: Any) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"c_{name}_{time.time_ns()}",
                                              "type": "tool_call"}])


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Gallery:
    g = Gallery(tmp_path_factory.mktemp("gallery") / "g.sqlite")
    g.enroll("Dana Whitfield", photo("astronaut"))
    return g


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> Path:
    """A second photo of the astronaut: mirrored and cropped (the package photos hold only one of her)."""
    img = ImageOps.mirror(Image.open(photo("astronaut")).convert("RGB")).crop((40, 0, 512, 400))
    path = tmp_path_factory.mktemp("photos") / "astronaut_mirrored.png"
    img.save(path)
    return path


# ------------------------------------------------------------------ tools


def test_langchain_tools_are_the_registry():
    store = ImageStore({"image_1": photo("group")})
    tools = langchain_tools(store)
    assert [t.name for t in tools] == list(TOOL_NAMES)
    detect = tools[0]
    out = json.loads(detect.invoke({"image": "image_1"}))
    assert out["num_faces"] == 6 and [f["face_id"] for f in out["faces"]] == [1, 2, 3, 4, 5, 6]
    pose = next(t for t in tools if t.name == "pose")
    assert "there is no face 9" in pose.invoke({"image": "image_1", "face_id": 9})  # error text, not a raise
    assert "unknown image 'image_7'" in pose.invoke({"image": "image_7"})


@pytest.mark.parametrize("question, ids, expected", [
    ("How many people are in the picture?", ["image_1"], [("count", "image_1", None, None)]),
    ("Who is smiling?", ["image_1"], [("smile", "image_1", None, None)]),
    ("Who is on the left?", ["image_1"], [("identify", "image_1", None, "left"),
                                          ("describe", "image_1", None, "left")]),
    ("Who is on the left, and are they smiling?", ["image_1"], [("identify", "image_1", None, "left"),
                                                                ("smile", "image_1", None, "left")]),
    ("Who is this?", ["image_1"], [("identify", "image_1", None, None)]),
    ("Is this Ada Lovelace?", ["image_1"], [("identify", "image_1", None, None)]),
    ("How old does the person on the right look?", ["image_1"], [("age", "image_1", None, "right")]),
    ("Is face 2 looking up?", ["image_1"], [("pose", "image_1", 2, None)]),
    ("Is she smiling, and how old is she?", ["image_1"], [("smile", "image_1", None, None),
                                                          ("age", "image_1", None, None)]),
    ("Is this the same person as in the first photo?", ["image_1", "image_2"], [("verify", "image_1", None, None)]),
    ("What is the weather like?", ["image_1"], []),
])
def test_routing_rules(question, ids, expected):
    from facellm.agent.planner import route

    plan = route(question, ids)
    assert [(i.name, i.target.image, i.target.face_id, i.target.side) for i in plan.intents] == expected
    if "Ada" in question:
        assert plan.intents[0].asked_name == "Ada Lovelace" and plan.intents[0].yes_no
    if expected and expected[0][0] == "verify":
        assert plan.intents[0].other_image == "image_2"


# ------------------------------------------------------------------ rules path (no model)


def test_rules_count_faces_in_group():
    r = FaceAgent(None, images=[photo("group")]).ask("How many faces are in this photo?")
    assert "6 faces" in r.answer and r.path == "rules" and r.answer_source == "template"
    assert [(e.tool, e.attribute, e.value) for e in r.evidence] == [("detect", "num_faces", 6)]
    assert r.grounding.ok and r.grounding.checked >= 1


def test_rules_smile_and_pose_on_astronaut_with_followups_reusing_the_analysis():
    agent = FaceAgent(None, images=[photo("astronaut")])
    r = agent.ask("Is the person smiling?")
    assert r.answer.startswith("Yes") and r.grounding.ok
    assert any(e.attribute == "smile" and e.value is True for e in r.evidence)
    first = agent.store.analysis("image_1", ())
    r2 = agent.ask("Which way is the head turned?")
    assert "frontal" in r2.answer and r2.evidence[0].attribute == "head_pose"
    assert agent.store.analysis("image_1", ()) is first  # the follow-up reused the cached analysis
    assert r2.tool_s < 0.5
    r3 = agent.ask("How old does she look?")
    assert "perceived" in r3.answer and "estimate" in r3.answer and r3.grounding.ok


def test_same_person_as_enrolled(gallery, mirrored):
    yes = FaceAgent(None, images=[mirrored], gallery=gallery).ask("Is this the same person as the enrolled one?")
    assert yes.answer.startswith("Yes") and "Dana Whitfield" in yes.answer
    assert yes.evidence[0].attribute == "identity" and yes.evidence[0].value == "Dana Whitfield"
    no = FaceAgent(None, images=[photo("grace_hopper")], gallery=gallery).ask(
        "Is this the same person as the enrolled one?")
    assert no.answer.startswith("No") and "Dana" not in no.answer
    asked = FaceAgent(None, images=[mirrored], gallery=gallery).ask("Is this Dana Whitfield?")
    assert asked.answer.startswith("Yes: the person matches Dana Whitfield")
    asked = FaceAgent(None, images=[photo("grace_hopper")], gallery=gallery).ask("Is this Dana Whitfield?")
    assert asked.answer.startswith("I can't confirm that the person is Dana Whitfield")


def test_two_photos_same_person(mirrored):
    agent = FaceAgent(None, images=[photo("astronaut")])
    r = agent.ask("Is this the same person as in the first photo?", images=[mirrored])
    assert r.tool_calls[0].name == "verify" and r.answer.startswith("Yes")
    r2 = agent.ask("Is this the same person as in the first photo?", images=[photo("grace_hopper")])
    assert r2.answer.startswith("No") and r2.tool_calls[0].arguments == {"image_a": "image_1", "image_b": "image_3"}


def test_who_is_on_the_left_in_group(tmp_path):
    g = Gallery(tmp_path / "g.sqlite")
    g.enroll("Sam Rivera", photo("group"), face_id=1)
    r = FaceAgent(None, images=[photo("group")], gallery=g).ask("Who is on the left?")
    assert r.tool_calls[0].arguments.get("face_id") == 1
    assert "Sam Rivera" in r.answer and "face 1 (left)" in r.answer.lower()
    r2 = FaceAgent(None, images=[photo("group")], gallery=g).ask("Who is the person on the right?")
    assert "Sam Rivera" not in r2.answer and "can't say" in r2.answer


def test_identity_policy_refuses_unknown_people(gallery):
    # the rules: no gallery match -> refusal
    r = FaceAgent(None, images=[photo("tom_hanks")], gallery=gallery).ask("Who is this?")
    assert "can't" in r.answer and "Dana" not in r.answer
    # a model that guesses a name is overruled, even though it called the right tool
    model = Scripted(script=[call("identify", image="image_1"), AIMessage(content="This is Tom Hanks, the actor.")])
    r = FaceAgent(model, images=[photo("tom_hanks")], gallery=gallery).ask("Who is this?")
    assert "Tom Hanks" not in r.answer and "can't" in r.answer and r.path == "model"
    assert any("identity" in n for n in r.notes)
    # no gallery at all
    r = FaceAgent(None, images=[photo("tom_hanks")]).ask("What is his name?")
    assert "no gallery of enrolled people" in r.answer and r.grounding.checked == 0


# ------------------------------------------------------------------ model path (scripted choices)


def test_model_chosen_tool_calls_and_grounding():
    model = Scripted(script=[call("detect", image="image_1"), AIMessage(content="There are 6 faces in the photo.")])
    r = FaceAgent(model, images=[photo("group")]).ask("How many people are there?")
    assert r.path == "model" and r.answer_source == "model" and r.stop_reason == "answered" and r.steps == 2
    assert [(c.name, c.origin, c.ok) for c in r.tool_calls] == [("detect", "model", True)]
    assert ("detect", None, "num_faces", 6) in [(e.tool, e.face_id, e.attribute, e.value) for e in r.evidence]
    assert r.grounding.ok
    # the model's second prompt held the real tool result
    tool_msgs = [m for m in model.prompts[1] if isinstance(m, ToolMessage)]
    assert json.loads(tool_msgs[0].content)["num_faces"] == 6
    # the tools offered are the registry's, with its schemas
    assert [t["function"]["name"] for t in model.tools] == list(TOOL_NAMES)


def test_contradiction_is_flagged():
    model = Scripted(script=[call("expression", image="image_1"),
                             AIMessage(content="There are 3 faces and face 1 is smiling.")])
    r = FaceAgent(model, images=[photo("group")]).ask("Who is smiling?")
    bad = {(i.attribute, i.verdict) for i in r.grounding.issues}
    assert ("smile", "contradicted") in bad and not r.grounding.ok
    assert r.to_dict()["grounding"]["contradictions"] >= 1


def test_multi_turn_history_and_second_image(mirrored):
    model = Scripted(script=[call("expression", image="image_1"), AIMessage(content="Yes, she is smiling."),
                             call("verify", image_a="image_1", image_b="image_2"),
                             AIMessage(content="Yes, the same person.")])
    agent = FaceAgent(model, images=[photo("astronaut")])
    agent.ask("Is she smiling?")
    r = agent.ask("Is this the same person as in the first photo?", images=[mirrored])
    assert r.tool_calls[0].result["same_person"] is True
    last_prompt = model.prompts[-1]
    assert sum(isinstance(m, ToolMessage) for m in last_prompt) == 2  # turn 1's result is still in the history
    assert "image_2" in last_prompt[-3].content


def test_tool_raises_and_times_out_are_observations():
    def boom(args, store):
        raise RuntimeError("sensor on fire")

    def slow(args, store):
        time.sleep(3)
        return {"image": args.image, "faces": []}

    extra = [ToolSpec("boom", "always fails", FaceArgs, boom), ToolSpec("slow", "too slow", FaceArgs, slow)]
    model = Scripted(script=[call("boom", image="image_1"), call("slow", image="image_1"),
                             call("no_such_tool", image="image_1"), call("pose", image="image_1", face_id=7),
                             AIMessage(content="I could not measure that.")])
    agent = FaceAgent(model, images=[photo("astronaut")], extra_tools=extra,
                      config=AgentConfig(tool_timeout_s=0.3, max_steps=6))
    t0 = time.perf_counter()
    r = agent.ask("Tell me something.")
    assert time.perf_counter() - t0 < 2.5  # the slow tool was abandoned, not waited for
    errors = [c.error for c in r.tool_calls]
    assert "sensor on fire" in errors[0] and "RuntimeError" in errors[0]
    assert "did not finish within 0.3 s" in errors[1]
    assert "unknown tool 'no_such_tool'" in errors[2]
    assert "there is no face 7" in errors[3]
    observations = [m.content for m in model.prompts[-1] if isinstance(m, ToolMessage)]
    assert len(observations) == 4 and all(json.loads(o)["error"] for o in observations)
    assert r.answer == "I could not measure that."


def test_malformed_call_rejected_then_rules_take_over():
    bad = message_from_text('<tool_call>{"name": "detect", "arguments": {"image": </tool_call>')
    assert bad.invalid_tool_calls and not bad.tool_calls
    model = Scripted(script=[bad, bad])
    r = FaceAgent(model, images=[photo("group")], config=AgentConfig(max_repairs=1)).ask("Count the faces.")
    assert r.steps == 2 and r.stop_reason == "gave_up" and r.path == "rules" and "6 faces" in r.answer
    rejected = [m for m in model.prompts[1] if isinstance(m, ToolMessage)]
    assert "could not be read" in rejected[0].content


def test_malformed_call_repaired_by_the_model():
    bad = message_from_text("<tool_call>{name: detect}</tool_call>")
    model = Scripted(script=[bad, call("detect", image="image_1"), AIMessage(content="I see 6 faces.")])
    r = FaceAgent(model, images=[photo("group")]).ask("How many faces?")
    assert r.path == "model" and r.answer == "I see 6 faces." and any("malformed" in n for n in r.notes)


def test_step_limit():
    model = Scripted(script=[call("detect", image="image_1") for _ in range(10)])
    r = FaceAgent(model, images=[photo("astronaut")], config=AgentConfig(max_steps=3)).ask("How many faces?")
    assert r.steps == 3 and r.stop_reason == "step_limit"
    assert "one face" in r.answer and r.answer_source == "template"  # phrased from the tool results it had
    r2 = FaceAgent(Scripted(script=[call("detect", image="image_1") for _ in range(10)]),
                   images=[photo("astronaut")], config=AgentConfig(max_steps=2)).ask("Tell me a story.")
    assert r2.stop_reason == "step_limit" and "within 2 steps" in r2.answer


def test_model_tools_that_miss_the_question_are_rule_routed():
    # the model measured head pose for a question about smiles: its answer cannot rest on evidence it lacks
    model = Scripted(script=[call("pose", image="image_1"), AIMessage(content="The face is poseable.")])
    r = FaceAgent(model, images=[photo("group")]).ask("Is the person on the left smiling?")
    assert r.path == "rules" and r.answer_source == "template" and "Face 1 (left)" in r.answer
    assert [(c.name, c.origin) for c in r.tool_calls] == [("pose", "model"), ("expression", "rules")]
    assert any("do not measure what the question needs (expression)" in n for n in r.notes)
    # analyze measures everything per face: a model that called it keeps its own answer
    model = Scripted(script=[call("analyze", image="image_1", face_id=1),
                             AIMessage(content="Face 1 is not smiling.")])
    r = FaceAgent(model, images=[photo("group")]).ask("Is the person on the left smiling?")
    assert r.path == "model" and r.answer == "Face 1 is not smiling."


def test_who_is_on_the_left_without_a_gallery_still_describes_the_face():
    r = FaceAgent(None, images=[photo("group")]).ask("Who is on the left?")
    assert "who the person on the left is: no gallery of enrolled people" in r.answer and "Face 1 (left): head" in r.answer
    assert [c.name for c in r.tool_calls] == ["identify", "analyze"]
    assert {e.face_id for e in r.evidence} == {1}


def test_model_answers_without_tools_is_rule_routed():
    model = Scripted(script=[AIMessage(content="Three people.")])
    r = FaceAgent(model, images=[photo("group")]).ask("How many faces are in the photo?")
    assert r.path == "rules" and "6 faces" in r.answer
    assert any("rule-routed" in n for n in r.notes)


def test_rules_first_mode_skips_the_model_for_recognised_questions():
    model = Scripted(script=[AIMessage(content="A story about faces.")])
    agent = FaceAgent(model, images=[photo("astronaut")], config=AgentConfig(mode="rules_first"))
    r = agent.ask("Is the person smiling?")
    assert not model.prompts and r.path == "rules" and r.answer.startswith("Yes") and r.model_s == 0
    r2 = agent.ask("Write me a poem.")  # no rule applies: the model answers, with the first turn in its history
    assert r2.answer == "A story about faces." and len(model.prompts) == 1
    assert any(isinstance(m, ToolMessage) for m in model.prompts[0])


def test_model_phrasing_of_rule_routed_answers_is_grounded():
    # the model calls no tool; the rules do; the model's wording is kept when it agrees with the tools ...
    model = Scripted(script=[AIMessage(content="Three."), AIMessage(content="I count six faces in the photo.")])
    r = FaceAgent(model, images=[photo("group")], config=AgentConfig(phrasing="model")).ask("How many faces?")
    assert r.path == "rules" and r.answer_source == "model" and r.answer == "I count six faces in the photo."
    assert any(isinstance(m, ToolMessage) for m in model.prompts[1])  # it worded the real detect result
    # ... and replaced by the template when it contradicts them
    model = Scripted(script=[AIMessage(content="Three."), AIMessage(content="There are three faces.")])
    r = FaceAgent(model, images=[photo("group")], config=AgentConfig(phrasing="model")).ask("How many faces?")
    assert r.answer_source == "template" and "6 faces" in r.answer and any("rejected" in n for n in r.notes)


# ------------------------------------------------------------------ FaceLLM as a chat model


def test_facellm_chat_model_in_process(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_facellm import tiny_model

    chat = FaceLLMChatModel(model=tiny_model(tmp_path), max_new_tokens=8)
    agent = FaceAgent(chat, images=[photo("astronaut")])
    r = agent.ask("How many faces are in this photo?")
    # the random tiny model cannot choose tools: the rules answer, and the model really ran
    assert r.steps >= 1 and r.model_s > 0 and "one face" in r.answer
    msgs = to_openai_messages(agent.history)
    assert msgs[0]["role"] == "user" and msgs[0]["content"][0]["type"] == "image_url"
    assert any(m["role"] == "tool" for m in msgs) and msgs[-1]["role"] == "assistant"


def test_facellm_prefix_cache_gives_the_same_tokens(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from langchain_core.messages import HumanMessage, SystemMessage
    from tiny_facellm import tiny_model

    from facellm.tools.registry import openai_tools

    model = tiny_model(tmp_path)
    msgs = [SystemMessage("You analyse faces."),
            HumanMessage(content=[{"type": "image_url", "image_url": {"url": str(photo("astronaut"))}},
                                  {"type": "text", "text": "Is the person smiling?"}])]
    plain = FaceLLMChatModel(model=model, max_new_tokens=6, prefix_cache=False)
    cached = FaceLLMChatModel(model=model, max_new_tokens=6)
    outs = [c.bind_tools(openai_tools()).invoke(msgs).response_metadata["raw"] for c in (plain, cached, cached)]
    assert len(cached._prefixes) == 1 and not plain._prefixes  # the second cached call reused the first's KV
    # the tool probe: no "<tool_call>" within 3 tokens -> stop there (the rules will answer)
    full = plain.bind_tools(openai_tools()).invoke(msgs)
    probed = plain.bind_tools(openai_tools()).invoke(msgs, tool_probe_tokens=3)
    assert full.response_metadata["completion_tokens"] == 6 and probed.response_metadata["completion_tokens"] == 3
    assert outs[0] == outs[1] == outs[2]


# ------------------------------------------------------------------ CLI


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    add_parser(sub)
    a = sub.add_parser("ask")
    a.add_argument("inputs", nargs="+")
    a.add_argument("--json", action="store_true")
    add_agent_arguments(a)
    return p.parse_args(argv)


def test_chat_cli_multi_turn_from_a_pipe():
    args = _args(["chat", str(photo("group")), "--no-model"])
    out = io.StringIO()
    cmd_chat(args, stdin=io.StringIO("How many faces?\nWho is smiling?\n/quit\nnot asked\n"), out=out)
    text = out.getvalue()
    assert "-> detect" in text and "-> expression" in text and "6 faces" in text and "not asked" not in text


def test_ask_agent_json(capsys):
    cmd_ask_agent(_args(["ask", str(photo("astronaut")), "Is she smiling?", "--agent", "--json", "--no-model"]))
    out = json.loads(capsys.readouterr().out)
    assert out["answer"].startswith("Yes") and out["path"] == "rules"
    assert out["tool_calls"][0]["name"] == "expression" and out["evidence"][0]["tool"] == "expression"
    assert out["grounding"]["ok"] is True


def test_openai_compatible_endpoint_as_the_model():
    """ChatOpenAI against a real OpenAI-compatible HTTP server on loopback; the tools run here."""
    sys.path.insert(0, str(Path(__file__).parent))
    from openai_loopback import serve

    from facellm.agent import openai_chat_model

    def policy(body: dict) -> dict:
        if not any(m["role"] == "tool" for m in body["messages"]):
            return {"content": "", "tool_calls": [{"name": "detect", "arguments": {"image": "image_1"}}]}
        result = json.loads(next(m for m in body["messages"] if m["role"] == "tool")["content"])
        return {"content": f"There are {result['num_faces']} faces in the photo."}

    with serve(policy) as url:
        agent = FaceAgent(openai_chat_model(url, "loopback-model"), images=[photo("group")])
        r = agent.ask("How many faces are there?")
        requests = serve.last_requests
    assert r.path == "model" and r.answer == "There are 6 faces in the photo." and r.grounding.ok
    assert [t["function"]["name"] for t in requests[0]["tools"]] == list(TOOL_NAMES)
    # a text-only endpoint gets images by reference, never as bytes
    assert "image_1" in json.dumps(requests[0]["messages"]) and "base64" not in json.dumps(requests[0]["messages"])


def test_tool_markup_instead_of_an_answer_falls_back_to_the_template():
    # a weak model may echo the tool response instead of answering: the answer comes from the tools
    model = Scripted(script=[call("detect", image="image_1"),
                             AIMessage(content='<tool_response>\n{"image":"image_1"}}')])
    r = FaceAgent(model, images=[photo("group")]).ask("How many faces are in this photo?")
    assert "6 faces" in r.answer and "<tool_response>" not in r.answer
    assert r.answer_source == "template" and any("tool markup" in n for n in r.notes)
