"""vLLM's multimodal processing step for FaceLLM: the face tools run here.

For each image: the face tools (``FaceLLMProcessor.analyze``: detection + 478-point mesh, + identity / parse
when the config asks), the same preprocessing and face tensors as FaceLLM's own processor, and the image's
placeholder span (``<image>`` x patches, then per face ``\\nFace i (where): <face> x T``), which replaces the
single ``<image>`` token of the prompt. Every tensor is padded to ``max_faces`` faces, so images batch
together in vLLM's model; the span's token ids travel as a padded field (``span_ids``/``span_len``) and
are cached with the image, so a repeated image is analysed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cached_property

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
               "region_masks", "region_mask_valid")
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
        """The longest span an image can get: every face shown, with the longest position word, plus the
        "(N faces found ...)" note."""
        proc = self.facellm_processor
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

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"image": self.max_span_tokens}


class FaceLLMDummyInputsBuilder(BaseDummyInputsBuilder[FaceLLMProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.facellm_processor.settings.image_token * mm_counts.get("image", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options=None):
        h, w = self.info.facellm_processor.settings.preprocess_config.size
        return {"image": self._get_dummy_images(width=w, height=h, num_images=mm_counts.get("image", 0),
                                                overrides=(mm_options or {}).get("image"))}


def image_fields(proc: FaceLLMProcessor, images: Sequence, max_span: int) -> dict[str, torch.Tensor]:
    """Per image (stacked on dim 0): pixels, face tensors padded to max_faces, and the placeholder span."""
    s = proc.settings
    loaded = [as_loaded(img) for img in images]
    faces_per_image, spans = [], []
    for img in loaded:
        analysis = proc.analyze(img) if s.use_region_encoder else None
        faces = select_faces(analysis, s.max_faces) if analysis is not None else []
        faces_per_image.append(faces)
        # the span text is FaceLLM's own (the processor's), so both engines see identical token ids
        spans.append(proc._image_text(faces, img.width, analysis.num_faces if analysis is not None else 0))
    vis = preprocess_images(loaded, s.preprocess_config)
    out: dict[str, torch.Tensor] = {"pixel_values": vis.pixel_values}
    span_ids = torch.zeros(len(loaded), max_span, dtype=torch.long)
    span_len = torch.zeros(len(loaded), dtype=torch.long)
    for i, text in enumerate(spans):
        ids = proc.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > max_span:
            raise ValueError(f"an image's placeholder span has {len(ids)} tokens, over the {max_span} planned")
        span_ids[i, : len(ids)] = torch.tensor(ids)
        span_len[i] = len(ids)
    out.update(span_ids=span_ids, span_len=span_len)
    if s.use_region_encoder:
        face = proc.face_tensors(faces_per_image, vis, [img.width for img in loaded])
        face.pop("face_boxes", None)
        for k, v in face.items():  # pad the faces dimension to max_faces: fixed shapes batch in vLLM
            pad = s.max_faces - v.shape[1]
            if pad > 0:
                v = torch.cat([v, torch.zeros((v.shape[0], pad, *v.shape[2:]), dtype=v.dtype)], dim=1)
            out[k] = v
    return out


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
