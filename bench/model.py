"""Benchmark the FaceLLM model on this CPU: tokens, time per component, prefill / decode speed, peak memory.

    .venv/bin/python bench/model.py [--repeat 5] [--new-tokens 32] [--out bench/results/model.md]

Rows compare, in the same run and on the same LM object, the default model (EfficientNet-Lite0 + face-region
encoder + SmolLM2-135M) with the same model without the region encoder (a plain LLaVA: patch tokens only), on a
1-face photo (astronaut) and the 6-face group photo (4 faces get tokens, ``max_faces``). The face tools' time
(the 478-point mesh the region encoder needs) is listed separately: it is part of every inference with the
encoder and none without it. Best of ``--repeat`` runs; read the ratios, the machine is noisy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from facellm.configuration import FaceLLMConfig
from facellm.modeling import FaceLLMForConditionalGeneration
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo

QUESTION = "Describe the faces in this photo."


def _reset_peak() -> None:
    """Reset the process' peak RSS (Linux): each row's peak is then its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1000, out  # the least disturbed run: other processes only ever add time


@torch.no_grad()
def bench_row(model: FaceLLMForConditionalGeneration, name: str, image, repeat: int, new_tokens: int) -> dict:
    proc = model.processor
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    _reset_peak()
    # face tools (mesh) alone, then the whole processor with the analysis precomputed
    uses_faces = model.region_encoder is not None
    t_tools, analysis = _timed(lambda: proc.analyze(image), repeat) if uses_faces else (0.0, None)
    t_proc, batch = _timed(lambda: proc(messages, analyses=[analysis], add_generation_prompt=True,
                                        return_labels=False), repeat)
    cfg = model.config
    ids = batch["input_ids"]
    n_image = int((ids == cfg.image_token_id).sum())
    n_face = int((ids == cfg.face_token_id).sum())
    face_keys = {k: batch[k] for k in ("face_mask", "region_points", "region_point_mask", "face_geometry")
                 if k in batch}

    t_tower, vis = _timed(lambda: model.vision_tower(batch["pixel_values"]), repeat)
    grid = tuple(vis.feature_map.shape[-2:])
    if uses_faces:
        enc = model.region_encoder
        t_region, (patches, faces) = _timed(lambda: enc(
            vis.tokens, grid, face_mask=face_keys["face_mask"], region_points=face_keys["region_points"],
            region_point_mask=face_keys["region_point_mask"], geometry=face_keys["face_geometry"]), repeat)
        t_proj, _ = _timed(lambda: (model.projector(patches), model.projector(faces)), repeat)
    else:
        t_region = 0.0
        t_proj, _ = _timed(lambda: model.projector(vis.tokens), repeat)

    model_inputs = {k: v for k, v in batch.items() if k in ("input_ids", "pixel_values", *face_keys)}
    embeds = model.get_inputs_embeds(**model_inputs)
    t_prefill, _ = _timed(lambda: model.lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                           use_cache=True), repeat)

    def gen(n: int):
        return model.generate(**model_inputs, attention_mask=batch["attention_mask"], max_new_tokens=n,
                              min_new_tokens=n, do_sample=False)

    # decode speed from the difference of a 1-token and an n-token generation: prefill and the visual
    # encoding cancel out
    t_one, _ = _timed(lambda: gen(1), repeat)
    t_gen, out = _timed(lambda: gen(new_tokens), repeat)
    n_new = out.shape[1] - 1
    visual_ms = t_tower + t_region + t_proj
    decode_s = max(t_gen - t_one, 1e-6) / 1000
    return {
        "model": name, "image": "", "prompt tokens": ids.shape[1], "image tokens": n_image, "face tokens": n_face,
        "tools ms": t_tools, "processor ms": t_proc, "tower ms": t_tower, "region enc ms": t_region,
        "projector ms": t_proj, "LM prefill ms": t_prefill, "prefill tok/s": ids.shape[1] / t_prefill * 1000,
        "decode tok/s": n_new / decode_s, "first token ms": t_tools + t_proc + visual_ms + t_prefill,
        "peak RSS MB": _peak_rss_mb(),
    }


def to_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", default="bench/results/model.md")
    args = ap.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    with_enc = FaceLLMForConditionalGeneration(FaceLLMConfig()).eval()
    without = FaceLLMForConditionalGeneration(FaceLLMConfig(use_region_encoder=False), lm=with_enc.lm,
                                              tokenizer=with_enc.tokenizer, vision_tower=with_enc.vision_tower).eval()
    images = {"astronaut (1 face)": load_image(photo("astronaut")), "group (6 faces)": load_image(photo("group"))}
    rows = []
    for img_name, img in images.items():
        for model_name, model in (("with region encoder", with_enc), ("without (plain LLaVA)", without)):
            bench_row(model, model_name, img, 1, 2)  # warm-up
            row = bench_row(model, model_name, img, args.repeat, args.new_tokens)
            row["image"] = img_name
            rows.append(row)
            print(f"{img_name:20s} {model_name:22s} first token {row['first token ms']:.0f} ms", file=sys.stderr)
    table = to_markdown(rows)
    pairs = [(rows[i], rows[i + 1]) for i in range(0, len(rows), 2)]
    ratios = "\n".join(
        f"- {a['image']}: the region encoder adds {a['face tokens']} tokens; time to first token x"
        f"{a['first token ms'] / b['first token ms']:.2f} (tools {a['tools ms']:.0f} ms + encoder "
        f"{a['region enc ms']:.0f} ms); decode speed x{a['decode tok/s'] / b['decode tok/s']:.2f}" for a, b in pairs)
    header = (f"FaceLLM default model on this CPU ({torch.get_num_threads()} threads, torch {torch.__version__}), "
              f"best of {args.repeat}, {args.new_tokens} new tokens, greedy.\n")
    text = f"{header}\n{table}\n\n{ratios}\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
