"""The LM weights vLLM loads for a FaceLLM folder (no vLLM import here, so it is testable anywhere).

The LM's own safetensors (from the folder ``lm_name_or_path`` refers to), with a ``lora/`` adapter folded in
(W + B @ A * alpha / r, peft's merge) and the embedding / output matrices widened by the ``<image>`` /
``<face>`` rows that FaceLLM saves in model.safetensors (``lm_token_rows.input`` / ``.output``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open

LORA_DIR = "lora"


def lora_deltas(folder: str | Path) -> dict[str, torch.Tensor]:
    """LM weight name -> its LoRA update (B @ A * scale), from a peft adapter folder."""
    folder = Path(folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("use_dora"):
        raise ValueError("DoRA adapters cannot be folded while loading; merge the model first (facellm.lora.merge)")
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
    state = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in state.items():
        if ".lora_A." not in key:
            continue
        b = state[key.replace(".lora_A.", ".lora_B.")]
        base = key.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
        out[base] = (b.float() @ a.float()) * scale
    return out


def lm_weights(lm_dir: str | Path, model_dir: str | Path, config, rows: dict[str, torch.Tensor],
               vocab: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the LM as vLLM should load it for this FaceLLM folder."""
    files = sorted(Path(lm_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{lm_dir} has no .safetensors weights for the LM")
    lora = Path(model_dir) / LORA_DIR
    deltas = lora_deltas(lora) if config.lora and (lora / "adapter_config.json").is_file() else {}
    if config.lora and not deltas:
        raise FileNotFoundError(f"{model_dir} says it has a LoRA adapter, but {LORA_DIR}/ has none")
    ids = torch.tensor([config.image_token_id, config.face_token_id])
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                w = st.get_tensor(name)
                if name in deltas:
                    w = (w.float() + deltas.pop(name)).to(w.dtype)
                if name.endswith(("embed_tokens.weight", "lm_head.weight")) and w.shape[0] < vocab:
                    new = torch.zeros(vocab, w.shape[1], dtype=w.dtype)
                    new[: w.shape[0]] = w
                    part = "output" if name.endswith("lm_head.weight") and "lm_token_rows.output" in rows \
                        else "input"
                    new[ids] = rows[f"lm_token_rows.{part}"].to(w.dtype)
                    w = new
                yield name, w
    if deltas:
        raise ValueError(f"LoRA weights without a matching LM weight: {sorted(deltas)[:3]}")
