"""Fine-tuning hooks: LoRA through peft, 4-bit QLoRA through bitsandbytes, freezing, adapter folders, merge."""

from __future__ import annotations

import pytest
import torch
from tiny_facellm import analysis, ask, tiny_model

from facellm.lora import LORA_DIR, lora_spec, merge, trainable_summary
from facellm.modeling import FaceLLMForConditionalGeneration

pytest.importorskip("peft")

SPEC = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_lora")


def _batch(model):
    return model.processor([ask("astronaut", "Describe the image.", "a smiling woman in a space suit"),
                            ask("group", "Describe the image.", "six people")],
                           analyses=[analysis("astronaut"), analysis("group")])


def _train(model, batch, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("lm", ["llama", "qwen2"])
def test_lora_train_save_load_merge(root, tmp_path, lm):
    model = tiny_model(root, lm, "clip", lora=SPEC)
    parts = trainable_summary(model)
    assert set(parts) == {"lm", "region_encoder", "projector"}  # tower frozen, LM base frozen
    lm_trainable = [n for n, p in model.lm.named_parameters() if p.requires_grad]
    assert lm_trainable and all("lora_" in n for n in lm_trainable)
    assert any("down_proj.lora_B" in n for n in lm_trainable) and not any("k_proj" in n for n in lm_trainable)
    batch = _batch(model)
    before = {n: p.detach().clone() for n, p in model.lm.named_parameters() if "lora_B" in n}
    losses = _train(model, batch)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(before[n], p) for n, p in model.lm.named_parameters() if "lora_B" in n)
    model.eval()
    with torch.no_grad():
        ref = model(**batch).logits

    folder = model.save_pretrained(tmp_path / "adapter")
    assert (folder / LORA_DIR / "adapter_config.json").is_file()
    assert (folder / LORA_DIR / "adapter_model.safetensors").is_file() and not (folder / "lm").exists()
    loaded = FaceLLMForConditionalGeneration.from_pretrained(folder)
    assert not any(p.requires_grad for n, p in loaded.lm.named_parameters() if "lora_" in n)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, ref, atol=1e-6)
    resumed = FaceLLMForConditionalGeneration.from_pretrained(folder, trainable=True)  # to continue training
    assert set(trainable_summary(resumed)) == {"lm", "region_encoder", "projector"}
    assert all("lora_" in n for n, p in resumed.lm.named_parameters() if p.requires_grad)

    merged_dir = merge(folder, tmp_path / "merged")
    assert (merged_dir / "lm" / "config.json").is_file() and not (merged_dir / LORA_DIR).exists()
    merged = FaceLLMForConditionalGeneration.from_pretrained(merged_dir)
    assert merged.config.lora is None and not hasattr(merged.lm, "peft_config")
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, ref, atol=1e-4)


def test_lora_spec_errors(root):
    assert lora_spec()["target_modules"][0] == "q_proj"
    with pytest.raises(ValueError, match="unknown LoRA option"):
        lora_spec({"rank": 4})
    with pytest.raises(ValueError, match="not in this LM"):
        tiny_model(root, "llama", "clip", lora={"target_modules": ["c_attn"]})


def test_frozen_parts_follow_config(root):
    model = tiny_model(root, "llama", "clip", freeze_vision=False, freeze_lm=False)
    parts = trainable_summary(model)
    assert {"vision_tower", "lm", "region_encoder", "projector"} == set(parts)
    frozen = tiny_model(root, "llama", "clip")
    assert set(trainable_summary(frozen)) == {"region_encoder", "projector"}


def test_qlora_4bit_forward_and_training_step(root, tmp_path):
    pytest.importorskip("bitsandbytes")
    # hidden 64: bitsandbytes packs 4-bit weights in blocks of 64
    model = tiny_model(root, "llama", "clip", hidden=64, lora=SPEC, load_in_4bit=True)
    assert type(model.lm.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    batch = _batch(model)
    model.train()
    loss = model(**batch).loss
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for n, p in model.lm.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    folder = model.save_pretrained(tmp_path / "q")
    again = FaceLLMForConditionalGeneration.from_pretrained(folder)
    assert again.config.load_in_4bit
    with torch.no_grad():
        q_logits = again(**batch).logits
    # merging a QLoRA adapter loads the base LM in full precision and folds the adapter in
    merged = FaceLLMForConditionalGeneration.from_pretrained(merge(folder, tmp_path / "qm"))
    assert not merged.config.load_in_4bit and merged.lm.dtype == torch.float32
    with torch.no_grad():
        m_logits = merged(**batch).logits
    assert torch.isfinite(m_logits).all() and (m_logits - q_logits).abs().mean() < 0.1 * q_logits.abs().mean()
