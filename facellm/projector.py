"""The projector: visual / region features -> the LM's embedding space (LLaVA-1.5's 2-layer MLP with GELU)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """``out_rms``: the outputs are RMS-normalised and scaled by a learned gain that starts at this value (the
    LM's own word-embedding RMS). Unnormalised, a fresh projector's tokens came out ~8x the norm of SmolLM2's
    word embeddings, and next to them the LM stopped reading the words around them (the attribute tokens): it
    answered "25 years" for a face whose tokens said 70, and 70 with the visual tokens scaled down to 0.1."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None, out_rms: float | None = None) -> None:
        super().__init__()
        hidden = hidden or out_dim
        self.fc1 = nn.Linear(in_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim)
        self.gain = nn.Parameter(torch.full((out_dim,), float(out_rms))) if out_rms else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(x)))
        if self.gain is None:
            return y
        return y * torch.rsqrt(y.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(y.dtype) * self.gain.to(y.dtype)

    def enable_norm(self, out_rms: float) -> None:
        """Turn the output normalisation on in a projector built without it (a later training stage)."""
        self.gain = nn.Parameter(torch.full((self.fc2.out_features,), float(out_rms), device=self.fc2.weight.device))
