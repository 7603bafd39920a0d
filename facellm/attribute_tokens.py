"""Attribute tokens: what the face-tuned vision tower reads on each face, handed to the LM in the LM's own words.

The tower stage (``facellm.train.tower``) tunes the vision tower with a small head that pools a face's cells of
the feature map into perceived age, gender and FER expression, trained on human labels. That head reads age to
~8 years on held-out real faces, yet an LM fed only the region tokens learned to answer one constant age for
every photo: learning to decode 10 continuous region tokens from a few thousand examples is the hard part.
Here the head is kept and its estimates become four extra tokens per face, each an embedding the LM already
knows, in the spirit of Tag2Text / RAM's tag-guided captioning:

Each face's tokens read as the text " aged 65, woman, happy" would (8 tokens, SmolLM2's own tokenization of it):

* " aged", " " and the two commas are the LM's embeddings of those words, the same for every face: an
  instruct LM copies "aged 65, woman, happy" from its prompt with no training at all (checked on SmolLM2-135M:
  bare "65 woman happy" was answered "This is a man.");
* age: the digits of the rounded estimate, the tens digit then the units digit (" " then the digit under 10);
* gender: p(man) * E(" man") + p(woman) * E(" woman") -- the head's probabilities mix the two word embeddings;
* expression: sum over FER's seven classes of p(class) * E(" class").

With tied input / output embeddings (SmolLM2) a mixed embedding already points at its likeliest word, so the
LM only has to learn to copy it into the asked form. They are estimates of how a face looks, never facts: the
model card and every answer say so. Race is not estimated, here or anywhere.

The tokens follow each face's region tokens ("Face 1 (left): <face> x (tokens_per_face + 8)"). The head runs
on the same feature map as the region encoder (the frozen tower's, or its cached features in training).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

EXPRESSIONS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")  # FER2013's seven classes
GENDER_WORDS = ("man", "woman")  # the tower's classes: 0 male, 1 female (perceived, as annotated)
AGE_SCALE = 10.0  # the head regresses age / 10
# " aged", " ", age tens digit, age units digit, ",", gender, ",", expression
N_ATTRIBUTE_TOKENS = 8
WORD_KEYS = ("digits", "space", "aged", "comma", "gender", "expression")  # attribute_word_ids' keys


def attribute_word_ids(tokenizer) -> dict[str, list[int]]:
    """The token ids the attribute tokens are made of; each word must be one token of this tokenizer."""

    def one(text: str) -> int:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens in this tokenizer: attribute tokens need single-token "
                             "words (digits, ' man', ' woman', ' happy', ...)")
        return ids[0]

    return {"digits": [one(str(d)) for d in range(10)], "space": [one(" ")], "aged": [one(" aged")], "comma": [one(",")],
            "gender": [one(" " + w) for w in GENDER_WORDS], "expression": [one(" " + w) for w in EXPRESSIONS]}


class AttributeHead(nn.Module):
    """Face cells of the feature map -> perceived age / 10, gender logits (man, woman), expression logits (FER)."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, hidden, 1)
        self.age = nn.Linear(hidden, 1)
        self.gender = nn.Linear(hidden, 2)
        self.expression = nn.Linear(hidden, len(EXPRESSIONS))

    def pooled(self, fmap: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """fmap (B, C, H, W), masks (B, F, H, W) of each face's cells -> (B, F, hidden)."""
        h = F.relu(self.proj(fmap))
        m = masks.to(h.dtype)
        return torch.einsum("bdhw,bfhw->bfd", h, m) / m.sum((2, 3)).clamp_min(1.0)[..., None]

    def forward(self, fmap: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One face per image: mask (B, H, W) -> age (B,), gender (B, 2), expression (B, 7)."""
        p = self.pooled(fmap, mask[:, None])[:, 0]
        return self.age(p).squeeze(-1), self.gender(p), self.expression(p)


def box_cells(boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, F, 4) boxes in grid units (x1, y1, x2, y2) -> (B, F, H, W) 1 on the cells whose centre lies in the box;
    a face smaller than a cell gets the cell under its centre (as the tower stage trained the head)."""
    gh, gw = grid
    ys = torch.arange(gh, device=boxes.device, dtype=boxes.dtype) + 0.5
    xs = torch.arange(gw, device=boxes.device, dtype=boxes.dtype) + 0.5
    x1, y1, x2, y2 = (boxes[..., i, None, None] for i in range(4))
    inside = (ys[:, None] >= y1) & (ys[:, None] <= y2) & (xs[None, :] >= x1) & (xs[None, :] <= x2)
    cy = ((y1 + y2) / 2).long().clamp(0, gh - 1)
    cx = ((x1 + x2) / 2).long().clamp(0, gw - 1)
    centre = (torch.arange(gh, device=boxes.device)[:, None] == cy) & (torch.arange(gw, device=boxes.device) == cx)
    empty = ~inside.flatten(-2).any(-1)
    return torch.where(empty[..., None, None], centre, inside).to(boxes.dtype)


class AttributeTokens(nn.Module):
    """Feature map + face boxes -> (B, F, 4, lm_hidden) word embeddings of each face's perceived attributes."""

    def __init__(self, channels: int, word_ids: dict[str, list[int]]) -> None:
        super().__init__()
        self.head = AttributeHead(channels)
        missing = set(WORD_KEYS) - set(word_ids)
        if missing:
            raise ValueError(f"attribute_word_ids lacks {sorted(missing)}: rebuild them with attribute_word_ids(tokenizer)")
        for key in WORD_KEYS:
            self.register_buffer(f"ids_{key}", torch.tensor(word_ids[key], dtype=torch.long), persistent=False)

    @torch.no_grad()
    def estimates(self, fmap: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head's raw reading: age in years (B, F), gender and expression probabilities (B, F, k)."""
        p = self.head.pooled(fmap, box_cells(boxes.to(fmap.dtype), tuple(fmap.shape[-2:])))
        return {"age": self.head.age(p).squeeze(-1).float() * AGE_SCALE,
                "gender": self.head.gender(p).float().softmax(-1),
                "expression": self.head.expression(p).float().softmax(-1)}

    def forward(self, fmap: torch.Tensor, boxes: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
        est = self.estimates(fmap, boxes)
        age = est["age"].round().clamp(1, 99).long()
        tens, units = age // 10, age % 10
        tens_ids = torch.where(tens == 0, self.ids_space[0], self.ids_digits[tens])
        digits = embed(torch.stack([tens_ids, self.ids_digits[units]], dim=-1))  # (B, F, 2, H)
        gender = est["gender"].to(digits.dtype) @ embed(self.ids_gender)  # (B, F, H)
        expression = est["expression"].to(digits.dtype) @ embed(self.ids_expression)
        aged, space, comma = (embed(ids)[0].expand_as(gender) for ids in (self.ids_aged, self.ids_space, self.ids_comma))
        return torch.stack([aged, space, digits[..., 0, :], digits[..., 1, :], comma, gender, comma, expression], dim=2)
