"""Which precision a training run uses: bf16 autocast where the hardware runs bf16 natively, else fp32.

On a CPU, bf16 only pays off with native bf16 matrix instructions (Intel AMX ``amx_bf16`` or AVX-512
``avx512_bf16``; measured on such a CPU: matmul 6.6x, a full SmolLM2-135M fine-tuning step 2.1x faster than
fp32). Without them oneDNN emulates bf16 and it is slower than fp32, so the run stays in fp32.

Autocast only: the trained parameters and the optimizer state stay fp32, and the saved weights too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CHOICES = ("auto", "bf16", "fp16", "no", "fp32")


@dataclass(frozen=True)
class Precision:
    mode: str  # accelerate's mixed_precision: "bf16", "fp16" or "no"
    reason: str

    @property
    def label(self) -> str:
        return {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "no": "fp32"}[self.mode]


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 CPU flags present (Linux /proc/cpuinfo; empty elsewhere or when unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    words = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            words.update(line.split(":", 1)[-1].split())
            break
    return [f for f in CPU_BF16_FLAGS if f in words]


def choose_precision(requested: str = "auto", *, device: str | None = None, cpuinfo: str | None = None
                     ) -> Precision:
    """Resolve a recipe's ``mixed_precision`` for this machine; explicit requests the hardware cannot honour
    fall back to fp32 with the reason said (never a crash, never a silent slow path)."""
    req = {"fp32": "no"}.get(requested, requested)
    if req not in ("auto", "bf16", "fp16", "no"):
        raise ValueError(f"mixed_precision must be one of {CHOICES}, not {requested!r}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if req == "no":
        return Precision("no", "fp32 asked for")
    if device == "cuda":
        if req == "fp16":
            return Precision("fp16", "asked for, on a GPU")
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "the GPU supports bf16")
        return Precision("fp16" if req == "auto" else "no", "the GPU lacks bf16")
    if req == "fp16":
        return Precision("no", "fp16 autocast is not used on a CPU")
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        return Precision("bf16", f"the CPU has {', '.join(flags)}")
    return Precision("no", f"the CPU lacks {' / '.join(CPU_BF16_FLAGS)} (bf16 would be emulated, slower than fp32)")
