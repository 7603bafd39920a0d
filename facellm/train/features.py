"""The frozen vision tower's feature map of each training image, computed once and reused every epoch and run.

Keyed by the image's sha256 and a fingerprint of the tower (its config and preprocessing), so a changed tower
never reads stale features. Computed in fp32 with autocast off (what inference computes), stored as fp16
(EfficientNet-Lite0's 112 x 14 x 14 map: 44 KB per image). Bounded: past ``max_bytes`` on disk new features
are kept in memory only for this run, and past ``max_memory_bytes`` they are recomputed when needed.
Default folder: ``$FACELLM_HOME/cache/features/<fingerprint>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

DEFAULT_MAX_BYTES = 4 << 30
DEFAULT_MAX_MEMORY_BYTES = 3 << 30


def default_folder() -> Path:
    return Path(os.environ.get("FACELLM_HOME", Path.home() / ".cache" / "facellm")) / "cache" / "features"


def tower_fingerprint(model) -> str:
    spec = {"vision": model.config.vision, "preprocess": model.processor.settings.preprocess}
    if getattr(model.config, "vision_tuned", None):  # a tuned tower's features are its own
        spec["tuned"] = model.config.vision_tuned
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, model, folder: Path | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES) -> None:
        if not model.config.freeze_vision:
            raise ValueError("the vision tower trains in this stage: its features cannot be cached")
        self.model = model
        self.folder = Path(folder or default_folder()).expanduser() / tower_fingerprint(model)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.max_memory_bytes = max_bytes, max_memory_bytes
        self.memory: dict[str, torch.Tensor] = {}
        self.memory_bytes = 0
        self.disk_bytes = sum(f.stat().st_size for f in self.folder.glob("*/*.safetensors"))
        self.hits = self.misses = 0

    def _file(self, sha: str) -> Path:
        return self.folder / sha[:2] / f"{sha}.safetensors"

    def get(self, items: list[tuple[str, str]]) -> torch.Tensor:
        """Feature maps (B, C, H', W') float32 for (sha256, image path) pairs, in order."""
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, str] = {}
        for sha, path in items:
            if sha in found or sha in todo:
                continue
            t = self.memory.get(sha)
            if t is None and self._file(sha).is_file():
                try:
                    t = load_file(str(self._file(sha)))["features"]
                except Exception:  # a torn file (killed mid-write is prevented by the rename; disk errors are not)
                    t = None
                if t is not None:
                    self._remember(sha, t)
            if t is None:
                todo[sha] = path
            else:
                found[sha] = t
                self.hits += 1
        if todo:
            self.misses += len(todo)
            found.update(self._compute(todo))
        return torch.stack([found[sha] for sha, _ in items]).float()

    @torch.no_grad()
    def _compute(self, todo: dict[str, str]) -> dict[str, torch.Tensor]:
        from facellm.processor import load_image_source
        from facellm.vision.base import preprocess_images

        tower = self.model.vision_tower
        shas = list(todo)
        pixels = preprocess_images([load_image_source(todo[s]) for s in shas],
                                   self.model.processor.settings.preprocess_config).pixel_values
        with torch.autocast(device_type=tower.device.type, enabled=False):
            fmap = tower(pixels.to(tower.device, tower.dtype)).feature_map.float().cpu()
        out = {}
        for sha, t in zip(shas, fmap):
            t = t.to(torch.float16).contiguous()
            out[sha] = t
            self._remember(sha, t)
            self._store(sha, t)
        return out

    def _remember(self, sha: str, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if self.memory_bytes + size <= self.max_memory_bytes:
            self.memory[sha] = t
            self.memory_bytes += size

    def _store(self, sha: str, t: torch.Tensor) -> None:
        f = self._file(sha)
        size = t.numel() * t.element_size() + 128
        if self.disk_bytes + size > self.max_bytes:
            return
        f.parent.mkdir(exist_ok=True)
        tmp = f.with_suffix(".tmp")
        save_file({"features": t}, str(tmp))
        tmp.replace(f)  # atomic: a killed run never leaves a half-written file under the real name
        self.disk_bytes += size
