"""Generation that reuses the KV cache of the token prefix a prompt shares with the previous prompt.

Benchmarks ask many questions behind one long shared text: FaceXBench's tool-retrieval items all start with the
same API catalogue (~1,500 tokens), tool items with the same tools section. Prefilling that text again for every
item costs seconds on a CPU. ``PrefixReuse`` keeps the KV cache of the last prompt's text prefix (up to its first
image or face placeholder: those tokens' embeddings depend on the image, not on the token id) and, for the next
prompt, prefills only what differs after the longest common prefix. Greedy outputs are the same as without it.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field

import torch

MIN_SHARED_TOKENS = 32  # below this a copy of the cache costs about what it saves


@dataclass
class PrefixStats:
    prompts: int = 0
    hits: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "hits": self.hits, "reused_tokens": self.reused_tokens,
                "prompt_tokens": self.prompt_tokens,
                "reused_share": round(self.reused_tokens / self.prompt_tokens, 3) if self.prompt_tokens else None}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixReuse:
    """One model's prefix cache (one prompt at a time: callers hold the model's lock)."""

    def __init__(self, model, *, min_tokens: int = MIN_SHARED_TOKENS) -> None:
        self.model = model
        self.min_tokens = min_tokens
        self._ids: list[int] = []
        self._kv = None
        self.stats = PrefixStats()
        self._lock = threading.Lock()
        cfg = model.config
        self._visual = {getattr(cfg, "image_token_id", None), getattr(cfg, "face_token_id", None)} - {None}

    def _text_prefix(self, ids: list[int]) -> int:
        """How many leading tokens are plain text (their KV depends on the token ids alone); the last prompt
        token is always left for ``generate`` to prefill."""
        end = len(ids) - 1
        for i, t in enumerate(ids[:end]):
            if t in self._visual:
                return i
        return max(0, end)

    def past_for(self, input_ids: torch.Tensor):
        """A cache covering this prompt's text prefix (a copy, extended in place by ``generate``), or None."""
        if input_ids.shape[0] != 1:
            return None
        ids = input_ids[0].tolist()
        with self._lock:
            self.stats.prompts += 1
            self.stats.prompt_tokens += len(ids)
            p = self._text_prefix(ids)
            if p < self.min_tokens:
                return None
            shared = min(common_prefix(self._ids, ids), p)
            if shared >= self.min_tokens:
                kv = self._kv
                if shared < len(self._ids):
                    kv = copy.deepcopy(kv)
                    kv.crop(shared - len(self._ids))  # a negative crop drops that many tokens from the end
                self.stats.hits += 1
                self.stats.reused_tokens += shared
            else:
                kv, shared = None, 0
            if shared < p:  # extend (or start) the stored prefix with this prompt's remaining text
                with torch.no_grad():
                    embeds = self.model.get_inputs_embeds(torch.tensor([ids[shared:p]]))
                    kv = self.model.lm(inputs_embeds=embeds, past_key_values=kv, use_cache=True).past_key_values
            self._ids, self._kv = ids[:p], kv
            return copy.deepcopy(kv)
