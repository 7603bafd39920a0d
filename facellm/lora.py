"""Fine-tuning hooks: LoRA on chosen LM modules (peft), 4-bit QLoRA (bitsandbytes), what trains, and merge.

The LoRA spec lives in ``FaceLLMConfig.lora`` (a dict, so it round-trips through config.json)::

    {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}

``load_in_4bit=True`` loads the LM's linear layers as NF4 through bitsandbytes (it runs on CPU too, slower).
Pitfall (ENVIRONMENT.md): a no-grad forward such as ``generate()`` repacks the 4-bit weights, after which
LoRA training on the *same* model object silently gets no gradient on most lora_B tensors. Train on a freshly
loaded 4-bit model.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_DIR = "lora"


def lora_spec(spec: dict | None = None, **overrides) -> dict:
    """A complete, JSON-friendly LoRA spec with defaults filled in."""
    out = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": list(DEFAULT_TARGETS)}
    out.update(spec or {})
    out.update(overrides)
    unknown = set(out) - {"r", "alpha", "dropout", "target_modules"}
    if unknown:
        raise ValueError(f"unknown LoRA option(s) {sorted(unknown)}; use r, alpha, dropout, target_modules")
    if int(out["r"]) < 1:
        raise ValueError("LoRA r must be at least 1")
    return out


def peft_config(spec: dict):
    from peft import LoraConfig, TaskType

    spec = lora_spec(spec)
    return LoraConfig(r=int(spec["r"]), lora_alpha=float(spec["alpha"]), lora_dropout=float(spec["dropout"]),
                      target_modules=list(spec["target_modules"]), bias="none", task_type=TaskType.CAUSAL_LM)


def bnb_4bit_config(compute_dtype: torch.dtype = torch.float32):
    """NF4 weights, computed in ``compute_dtype`` (float32 on CPU; bfloat16 on GPUs)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
                              bnb_4bit_use_double_quant=False)


def add_lora(lm, spec: dict):
    """Wrap the LM in a peft model with fresh LoRA adapters (base weights frozen by peft)."""
    from peft import get_peft_model

    missing = [t for t in lora_spec(spec)["target_modules"]
               if not any(name.split(".")[-1] == t for name, _ in lm.named_modules())]
    if missing:
        raise ValueError(f"LoRA target module(s) {missing} are not in this LM "
                         f"(e.g. Llama/Qwen2 use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
    return get_peft_model(lm, peft_config(spec))


def load_lora(lm, folder: str | Path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(lm, str(folder), is_trainable=trainable)


def is_peft(lm) -> bool:
    return hasattr(lm, "peft_config")


def apply_trainable(model, lora_trainable: bool = True) -> None:
    """Set requires_grad from the config: region encoder + projector train; the tower and the LM's own
    weights as ``freeze_vision`` / ``freeze_lm`` say; with LoRA only the adapters train in the LM (the folder
    keeps the adapter, not the base weights)."""
    cfg = model.config
    model.vision_tower.freeze(cfg.freeze_vision)
    for name, p in model.lm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(lora_trainable)
        elif cfg.load_in_4bit or cfg.freeze_lm or is_peft(model.lm):  # with LoRA only the adapters train
            p.requires_grad_(False)
        else:
            p.requires_grad_(p.is_floating_point())
    for module in (model.region_encoder, model.projector):
        if module is not None:
            for p in module.parameters():
                p.requires_grad_(True)


def trainable_summary(model) -> dict[str, int]:
    """Trainable parameter counts per top-level part."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = name.split(".")[0]
            out[part] = out.get(part, 0) + p.numel()
    return out


def merge(dir_in: str | Path, dir_out: str | Path) -> Path:
    """Write a standalone folder: LoRA folded into the LM, the LM's weights saved in ``dir_out/lm``.

    The base LM is loaded in full precision for the merge even when the adapter was trained with QLoRA.
    """
    from .modeling import FaceLLMForConditionalGeneration

    model = FaceLLMForConditionalGeneration.from_pretrained(dir_in, load_in_4bit=False)
    if is_peft(model.lm):
        model.lm = model.lm.merge_and_unload()
    model.config.lora = None
    return model.save_pretrained(dir_out, save_lm=True)
