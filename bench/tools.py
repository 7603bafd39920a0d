"""Benchmark the face tools: latency per tool and for analyze, faces/s, peak memory, detector backends.

    .venv/bin/python bench/tools.py [--repeat 7] [--cnn] [--out bench/results/tools.md]

Images: real photos (astronaut, the 6-face group photo) composed onto 640x480 and 1920x1080 canvases with
1 and 5 faces. Prints Markdown tables; the ratios matter more than the absolute numbers on a noisy machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facellm.tools.analyze import Analyzer
from facellm.tools.detector import detect, get_backend
from facellm.tools.image_io import load_image
from facellm.tools.photos import photo

# Face crops (x1, y1, x2, y2) with some context, taken from the real photos (checked by eye).
GROUP_CROPS = [(20, 230, 200, 430), (245, 100, 420, 290), (440, 220, 620, 420), (715, 290, 890, 490),
               (880, 30, 1060, 230)]


def _canvas(size: tuple[int, int], crops: list[Image.Image]) -> np.ndarray:
    """Place the crops side by side on a plain background, each about 1/3 of the height for 1 face."""
    w, h = size
    bg = Image.new("RGB", size, (128, 120, 110))
    n = len(crops)
    cell = w // n
    side = int(min(cell * 0.9, h * (0.45 if n == 1 else 0.4)))
    for i, c in enumerate(crops):
        c = c.resize((side, side), Image.Resampling.BILINEAR)
        bg.paste(c, (i * cell + (cell - side) // 2, (h - side) // 2))
    return np.asarray(bg)


def make_images() -> dict[str, np.ndarray]:
    astro = Image.open(photo("astronaut")).convert("RGB").crop((120, 20, 330, 250))
    group = Image.open(photo("group")).convert("RGB")
    five = [group.crop(b) for b in GROUP_CROPS]
    return {
        "640x480, 1 face": _canvas((640, 480), [astro]),
        "640x480, 5 faces": _canvas((640, 480), five),
        "1920x1080, 1 face": _canvas((1920, 1080), [astro]),
        "1920x1080, 5 faces": _canvas((1920, 1080), five),
    }


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:  # Linux: writing 5 resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def median_ms(fn, repeat: int) -> tuple[float, object]:
    out = fn()  # warm-up (model load, allocations)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def bench_analyze(images: dict[str, np.ndarray], repeat: int) -> list[str]:
    analyzer = Analyzer()
    rows = ["| image | faces found | analyze median ms | ms per face | faces/s | " +
            " | ".join(f"{s} ms" for s in ("detect", "mesh", "landmarks68", "parse", "pose", "cues", "attributes",
                                            "expression", "quality")) + " | peak RSS MB |",
            "|" + "---|" * 15]
    for name, arr in images.items():
        img = load_image(arr)
        _reset_peak()
        timings = []

        def run():
            res = analyzer.analyze(img)
            timings.append(res.timings_ms)
            return res

        ms, res = median_ms(run, repeat)
        n = max(1, res.num_faces)
        per_step = {k: statistics.median(t.get(k, 0.0) for t in timings[1:]) for k in timings[-1]}
        steps = " | ".join(f"{per_step.get(s, 0):.1f}" for s in ("detect", "mesh", "landmarks68", "parse", "pose",
                                                                   "cues", "attributes", "expression", "quality"))
        rows.append(f"| {name} | {res.num_faces} | {ms:.1f} | {ms / n:.1f} | {1000 * n / ms:.1f} | {steps} | "
                    f"{_peak_rss_mb():.0f} |")
        sys.stdout.flush()
    return rows


def bench_embedding(images: dict[str, np.ndarray], repeat: int) -> list[str]:
    analyzer = Analyzer()
    rows = ["| image | embedding (128-d dlib) median ms | ms per face |", "|---|---|---|"]
    for name in ("640x480, 1 face", "640x480, 5 faces"):
        img = load_image(images[name])
        ms, res = median_ms(lambda: analyzer.analyze(img, steps=("embedding",)), repeat)
        emb = res.timings_ms.get("embedding", 0.0)
        rows.append(f"| {name} | {emb:.1f} | {emb / max(1, res.num_faces):.1f} |")
    return rows


def bench_detectors(images: dict[str, np.ndarray], repeat: int, cnn: bool) -> list[str]:
    backends = ["mediapipe", "dlib-hog", "mtcnn"] + (["dlib-cnn"] if cnn else [])
    real = {"group (6 faces)": "group", "astronaut (1)": "astronaut", "grace_hopper (1)": "grace_hopper",
            "camera (1)": "camera", "mask_blue (0)": "mask_blue"}
    head = ["backend", "640x480 1 face ms", "640x480 5 faces ms", "1920x1080 5 faces ms", *real]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for be in backends:
        get_backend(be)
        cells = []
        for name in ("640x480, 1 face", "640x480, 5 faces", "1920x1080, 5 faces"):
            img = load_image(images[name])
            r = 1 if be == "dlib-cnn" else repeat
            ms, found = median_ms(lambda: detect(img, backend=be), r)
            cells.append(f"{ms:.1f} ({len(found)} found)")
        for key in real.values():
            cells.append(str(len(detect(load_image(photo(key)), backend=be))))
        rows.append(f"| {be} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cnn", action="store_true", help="include dlib's CNN detector (slow: ~1.5 s per image)")
    ap.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    images = make_images()
    sections = [
        ("analyze (default steps, MediaPipe detector)", bench_analyze(images, args.repeat)),
        ("identity descriptor", bench_embedding(images, args.repeat)),
        ("detector backends: latency and face counts on the real photos", bench_detectors(images, args.repeat, args.cnn)),
    ]
    text = []
    for title, rows in sections:
        text += [f"**{title}**", "", *rows, ""]
    report = "\n".join(text)
    print("\n" + report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
