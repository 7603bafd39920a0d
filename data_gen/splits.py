"""The one split rule for real face datasets: deterministic, hash-based, by group.

A group is the unit that must not straddle splits: the photo (UTKFace, FER2013), or the identity (CelebA), so
splits are photo-disjoint everywhere and identity-disjoint where identities are known. The built-in benchmark
builds its items from ``test`` and reuses ``split_for`` to decide what is held out; ``test`` is never trained on.

* A dataset's own held-out part (FER2013's ``validation`` folder, the public test half) is ``test``.
* A dataset's own training part is carved into ``train`` and ``validation`` (our own val) by the hash.
* Without a dataset split: ``test`` for a ``held_out`` share of groups, ``validation`` for ``val_share``,
  else ``train``.
"""

from __future__ import annotations

import hashlib

HELD_OUT = 0.2  # share of groups held out as test when the dataset has no split of its own
VAL_SHARE = 0.05  # share of groups carved out of training as our own validation split


def unit_hash(seed: int, group: str) -> float:
    """A group's place in [0, 1): the same ``(seed, group)`` always gives the same number."""
    digest = hashlib.sha256("\x1f".join(map(str, (seed, "split", group))).encode()).digest()[:8]
    return int.from_bytes(digest, "big") / 2 ** 64


def split_for(group: str, dataset_split: str | None = None, *, seed: int = 0, held_out: float = HELD_OUT,
              val_share: float = VAL_SHARE) -> str:
    """``train`` / ``validation`` / ``test`` for a group (see the module doc)."""
    u = unit_hash(seed, group)
    if dataset_split in ("test", "validation"):
        return "test"
    if dataset_split == "train":
        return "validation" if u < val_share else "train"
    if u < held_out:
        return "test"
    return "validation" if u < held_out + val_share else "train"
