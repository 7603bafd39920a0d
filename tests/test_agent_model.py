"""The agent with the real default FaceLLM model, in-process (slow: a generation takes seconds to a minute on a
shared 2-core CPU). Whatever the model's training state, `facellm ask --agent` must answer these correctly:
with its own tool calls when it makes valid ones, else through the rules fallback."""

from __future__ import annotations

import pytest

from facellm.agent import AgentConfig, FaceAgent, FaceLLMChatModel
from facellm.tools.photos import photo

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chat() -> FaceLLMChatModel:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return FaceLLMChatModel.from_pretrained(None, max_new_tokens=48)


def test_default_model_agent_counts_faces(chat):
    r = FaceAgent(chat, images=[photo("group")], config=AgentConfig(max_steps=2)).ask(
        "How many faces are in this photo?")
    assert r.steps >= 1 and r.model_s > 0
    assert any(e.attribute == "num_faces" and e.value == 6 for e in r.evidence)
    assert r.grounding.ok or r.path == "model"  # a trained model's own wording may be flagged, never hidden
    if r.path == "rules":
        assert "6 faces" in r.answer


def test_default_model_agent_smile_follow_up(chat):
    agent = FaceAgent(chat, images=[photo("astronaut")], config=AgentConfig(max_steps=2))
    r = agent.ask("Is the person smiling?")
    assert any(e.attribute == "smile" and e.value is True for e in r.evidence)
    r2 = agent.ask("Which way is the head turned?")
    assert r2.steps >= 1 and any(e.attribute == "head_pose" for e in r2.evidence)
