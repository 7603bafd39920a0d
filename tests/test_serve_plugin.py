"""The vLLM plugin's vLLM-free parts: the config's text_config, LM folder lookup, and the LM weights it loads
(LoRA folded in exactly as peft's merge does, vocabulary widened by FaceLLM's placeholder rows)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from facellm.lora import merge
from facellm.serve.vllm_plugin.config import FaceLLMVllmConfig, lm_folder
from facellm.serve.vllm_plugin.weights import lm_weights
from tiny_facellm import tiny_model

SPEC = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def test_lora_folded_while_loading_equals_merge(tmp_path):
    model = tiny_model(tmp_path, "qwen2", "clip", lora=SPEC)  # untied embeddings: input and output rows
    with torch.no_grad():
        for n, p in model.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # peft starts B at zero: give the adapter something to add
    src = model.save_pretrained(tmp_path / "with_lora")
    merged = merge(src, tmp_path / "merged")
    config = FaceLLMVllmConfig.from_pretrained(src)
    assert lm_folder(config) == lm_folder(config, src) and (lm_folder(config) / "config.json").is_file()
    vocab = config.text_config.vocab_size
    assert vocab == config.face_token_id + 1  # widened for <image> / <face>
    rows = load_file(str(src / "model.safetensors"))
    ours = dict(lm_weights(lm_folder(config), src, config, rows, vocab))
    ref = load_file(str(merged / "lm" / "model.safetensors"))
    changed = [n for n in ours if "q_proj.weight" in n or "down_proj.weight" in n]
    assert changed
    for name, w in ref.items():
        assert torch.allclose(ours[name], w, atol=1e-5), name
    # the merged folder's LM is found as lm/ inside it
    mcfg = FaceLLMVllmConfig.from_pretrained(merged)
    assert mcfg.lm_name_or_path == "lm" and lm_folder(mcfg) == merged / "lm"
    assert mcfg.text_config.hidden_size == config.text_config.hidden_size


def test_image_fields_cache_and_precompute(tmp_path, monkeypatch):
    """The face tools run once per image (facellm serve runs them beforehand in its pool, the processor then only
    looks them up); a batch of images gives exactly the one-image fields stacked, and the span is FaceLLM's own."""
    import pytest

    pytest.importorskip("vllm")
    from facellm.processor import FaceLLMProcessor
    from facellm.serve.vllm_plugin import processing
    from facellm.tools.image_io import load_image
    from facellm.tools.photos import photo

    folder = tiny_model(tmp_path).save_pretrained(tmp_path / "tiny")
    proc = FaceLLMProcessor.from_pretrained(folder)
    monkeypatch.setattr(processing, "FIELDS_CACHE", processing.FieldsCache(8))
    span = processing.max_span_tokens(proc)
    astro, group = load_image(photo("astronaut")), load_image(photo("group"))
    calls = []
    real = proc.analyze
    monkeypatch.setattr(proc, "analyze", lambda img: calls.append(img.width) or real(img))

    assert processing.precompute_image_fields(proc, astro, span) is False  # computed: the tools ran
    assert processing.precompute_image_fields(proc, astro, span) is True  # cached
    assert len(calls) == 1
    both = processing.image_fields(proc, [astro.rgb.copy(), group], span)  # a copy of the pixels hits the cache
    assert len(calls) == 2  # only the group photo was new
    one = processing.one_image_fields(proc, group, span)
    for k, v in one.items():
        assert both[k].shape[0] == 2 and torch.equal(both[k][1:], v), k
    # the span is the processor's own text for the faces it found, the same ids FaceLLM's processor puts in
    ids = both["span_ids"][0, : int(both["span_len"][0])].tolist()
    batch = proc([{"role": "user", "content": [{"type": "image", "image": astro}]}], return_labels=False)
    text_ids = batch["input_ids"][0].tolist()
    assert any(text_ids[i:i + len(ids)] == ids for i in range(len(text_ids) - len(ids) + 1))
    assert int(both["face_mask"][1].sum()) == min(6, proc.settings.max_faces)  # the group photo's faces, capped
    assert processing.image_fields(proc, [], span) == {}


def test_stage_log_and_dtype_choice(tmp_path):
    import json

    from facellm.serve.engines import StageLog, cpu_has_bf16, default_dtype, resolve_dtype

    log = StageLog(str(tmp_path / "t.jsonl"))
    log.write(tools=0.1234567, decode=1.5)
    log.write(tools=0.2, decode=1.0)
    rows = [json.loads(x) for x in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows == [{"tools": 0.12346, "decode": 1.5}, {"tools": 0.2, "decode": 1.0}]
    StageLog("").write(tools=1.0)  # unset: writes nothing, fails nothing
    assert resolve_dtype("float32") == "float32" and resolve_dtype(None) == default_dtype()
    if not torch.cuda.is_available():
        assert default_dtype() == ("bfloat16" if cpu_has_bf16() else "float32")
