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
