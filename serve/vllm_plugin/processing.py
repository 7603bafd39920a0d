"""vLLM's multimodal processing step for FaceLLM: the face tools run here.

For each image: the face tools (``FaceLLMProcessor.analyze``: detection + 478-point mesh, + identity / parse
when the config asks), the same preprocessing and face tensors as FaceLLM's own processor, and the image's
placeholder span (``<image>`` x patches, then per face ``\\nFace i (where): <face> x T``), which replaces the
single ``<image>`` token of the prompt. Every tensor is padded to ``max_faces`` faces, so images batch
together in vLLM's model; the span's token ids travel as a padded field (``span_ids``/``span_len``) and
are cached with the image, so a repeated image is analysed once.

vLLM runs this step in one worker thread of the front-end process, so requests with photos would queue behind
each other's face tools there. ``facellm serve`` therefore computes each image's fields beforehand in its own
thread pool (``precompute_image_fields``) and leaves them in ``FIELDS_CACHE``, keyed by the image's pixels;
the processor here then only looks them up (and computes them itself when called without that step, e.g. under
vLLM's own server).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import cached_property

import numpy as np

import torch
from transformers import BatchFeature

from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import (BaseDummyInputsBuilder, BaseMultiModalProcessor, BaseProcessingInfo,
                                        PromptReplacement, PromptUpdate, PromptUpdateDetails)

from facellm.processor import FaceLLMProcessor, select_faces
from facellm.tools.image_io import as_loaded
from facellm.vision.base import preprocess_images

FACE_FIELDS = ("face_mask", "region_points", "region_point_mask", "face_geometry", "face_identity",
               "region_masks", "region_mask_valid", "face_boxes")
FIELDS = ("pixel_values", "span_ids", "span_len") + FACE_FIELDS
_POSITIONS = ("left", "middle", "right")


class FaceLLMProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self):
        return self.ctx.get_hf_config()

    @cached_property
    def facellm_processor(self) -> FaceLLMProcessor:
        return FaceLLMProcessor.from_pretrained(self.ctx.model_config.model)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None}

    @cached_property
    def max_span_tokens(self) -> int:
        return max_span_tokens(self.facellm_processor)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.max_span_tokens}


class FaceLLMDummyInputsBuilder(BaseDummyInputsBuilder[FaceLLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.facellm_processor.settings.image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        h, w = self.info.facellm_processor.settings.preprocess_config.size
        return {"image": self._get_dummy_images(width=w, height=h, num_images=mm_counts.get("image", 0),
                                                overrides=(mm_options or {}).get("image"))}


def max_span_tokens(proc: FaceLLMProcessor) -> int:
    """The longest span an image can get: every face shown, with the longest position word, plus the
    "(N faces found ...)" note."""
    s, tok = proc.settings, proc.tokenizer
    gh, gw = s.grid

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    total = gh * gw
    if s.use_region_encoder:
        for i in range(1, s.max_faces + 1):
            total += max(n(f"\nFace {i} ({w}): ") for w in _POSITIONS) + s.tokens_per_face
        total += n(f"\n(9999 faces found; the {s.max_faces} most confident are shown)")
    return total + 4


class FieldsCache:
    """A bounded, thread-safe LRU of one image's fields, keyed by (processor settings, pixels)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._items: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> dict[str, torch.Tensor] | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: tuple, item: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


FIELDS_CACHE = FieldsCache()


def _key(proc: FaceLLMProcessor, img, max_span: int) -> tuple:
    rgb = np.ascontiguousarray(img.rgb)
    digest = hashlib.blake2b(rgb.data, digest_size=16).hexdigest()  # the pixels, whatever the file was
    return (repr(proc.settings), max_span, rgb.shape, digest)


def one_image_fields(proc: FaceLLMProcessor, image, max_span: int, analysis=None) -> dict[str, torch.Tensor]:
    """One image's fields (leading dim 1): pixels, face tensors padded to max_faces, the placeholder span
    (``analysis``: the face tools' result when already known, else they run here)."""
    s = proc.settings
    img = as_loaded(image)
    if analysis is None and s.use_region_encoder:
        analysis = proc.analyze(img)
    # as FaceLLMProcessor does: the faces only with the region encoder, the count whenever it is known
    faces = select_faces(analysis, s.max_faces) if (analysis is not None and s.use_region_encoder) else []
    # the span text is FaceLLM's own (the processor's), so both engines see identical token ids
    span = proc._image_text(faces, img.width, analysis.num_faces if analysis is not None else 0)
    vis = preprocess_images([img], s.preprocess_config)
    out: dict[str, torch.Tensor] = {"pixel_values": vis.pixel_values}
    ids = proc.tokenizer(span, add_special_tokens=False)["input_ids"]
    if len(ids) > max_span:
        raise ValueError(f"an image's placeholder span has {len(ids)} tokens, over the {max_span} planned")
    span_ids = torch.zeros(1, max_span, dtype=torch.long)
    span_ids[0, : len(ids)] = torch.tensor(ids)
    out.update(span_ids=span_ids, span_len=torch.tensor([len(ids)], dtype=torch.long))
    if s.use_region_encoder:
        face = proc.face_tensors([faces], vis, [img.width])
        for k, v in face.items():  # pad the faces dimension to max_faces: fixed shapes batch in vLLM
            pad = s.max_faces - v.shape[1]
            if pad > 0:
                v = torch.cat([v, torch.zeros((v.shape[0], pad, *v.shape[2:]), dtype=v.dtype)], dim=1)
            out[k] = v
    return out


def precompute_image_fields(proc: FaceLLMProcessor, image, max_span: int, analysis=None) -> bool:
    """Compute one image's fields into ``FIELDS_CACHE`` unless already there; True if it was (a cache hit).
    ``analysis``: the image's ``FaceAnalysis`` when the face tools already ran (the agent's cached one)."""
    img = as_loaded(image)
    key = _key(proc, img, max_span)
    if FIELDS_CACHE.get(key) is not None:
        return True
    FIELDS_CACHE.put(key, one_image_fields(proc, img, max_span, analysis))
    return False


def image_fields(proc: FaceLLMProcessor, images: Sequence, max_span: int) -> dict[str, torch.Tensor]:
    """Per image (stacked on dim 0): pixels, face tensors padded to max_faces, and the placeholder span."""
    if not images:
        return {}
    per_image = []
    for image in images:
        img = as_loaded(image)
        key = _key(proc, img, max_span)
        item = FIELDS_CACHE.get(key)
        if item is None:
            item = one_image_fields(proc, img, max_span)
            FIELDS_CACHE.put(key, item)
        per_image.append(item)
    return {k: torch.cat([item[k] for item in per_image]) for k in per_image[0]}


class FaceLLMMultiModalProcessor(BaseMultiModalProcessor[FaceLLMProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        images = hf_data.get("images") or []
        if not isinstance(images, (list, tuple)):
            images = [images]
        return BatchFeature(image_fields(self.info.facellm_processor, images, self.info.max_span_tokens))

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
                              ) -> Mapping[str, MultiModalFieldConfig]:
        return {k: MultiModalFieldConfig.batched("image") for k in FIELDS if k in hf_inputs}

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        cfg = self.info.get_hf_config()
        embed_ids = [cfg.image_token_id, cfg.face_token_id]

        def replacement(item_idx: int) -> PromptUpdateDetails:
            item = out_mm_kwargs["image"][item_idx]
            n = int(item["span_len"].data)
            seq = item["span_ids"].data[:n].tolist()
            return PromptUpdateDetails.select_token_ids(seq, embed_ids)

        return [PromptReplacement(modality="image", target=[cfg.image_token_id], replacement=replacement)]
