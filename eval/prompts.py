"""An item as the OpenAI-style messages a model sees, in one of the prompt settings."""

from __future__ import annotations

from .facexbench import SETTINGS, mc_prompt
from .items import EvalItem

COT_FREE_TEXT = "Think step by step, then give your final answer on its own last line as 'Answer: ...'."
TOOL_IMAGE_NOTE = "The images in this conversation are {ids}."


def image_ids(item: EvalItem) -> list[str]:
    return [f"image_{i + 1}" for i in range(len(item.images))]


def item_text(item: EvalItem, setting: str = "zero_shot") -> str:
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {', '.join(SETTINGS)}")
    if item.kind == "mc":
        return mc_prompt(item, setting)
    text = item.question
    if setting in ("in_context", "cot") and item.prepend_text:
        text = f"{item.prepend_text}\n{text}"
    if setting == "cot" and item.kind in ("attribute", "open"):
        text = f"{text}\n{COT_FREE_TEXT}"
    return text


def build_messages(item: EvalItem, setting: str = "zero_shot", *, with_images: bool = True) -> list[dict]:
    """One user message: the item's images (file paths; endpoints get them as data URIs) then its text.
    Text-only items (FaceXBench's tool retrieval) and the no-image baseline get no image parts."""
    parts: list[dict] = []
    if with_images and not item.meta.get("text_only"):
        parts = [{"type": "image_url", "image_url": {"url": p}} for p in item.images]
    text = item_text(item, setting)
    if item.kind == "tool" and len(item.images) > 1:
        text = f"{TOOL_IMAGE_NOTE.format(ids=', '.join(image_ids(item)))}\n{text}"
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]
