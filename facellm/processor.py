"""FaceLLMProcessor: chat messages with images -> the tensors FaceLLM takes.

Messages are OpenAI-style::

    [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},   # or a file path / file:// URL
        {"type": "image", "image": pil_or_path_or_array},                            # or plain objects
        {"type": "text", "text": "How old does face 2 look?"}]},
     {"role": "assistant", "content": "..."}]

Each image becomes a span of placeholder tokens in the text (token layout, default config)::

    <image> x 196                                 the 14 x 14 patch tokens of the vision tower (49 with patch_pool=2)
    \\nFace 1 (left): <face> x 10                   per face, left to right: 9 region tokens + 1 geometry
    \\nFace 2 (right): <face> x 10                  token (+1 identity token when that is on)

The model replaces the placeholders, in reading order, with [patch tokens, face 1 tokens, face 2 tokens, ...]
of each image in turn. The face tools (``facellm.tools.analyze``, steps "mesh" (+ "embedding" for the identity
token, + "parse" for the mask bias)) run on every image unless a precomputed ``FaceAnalysis`` is passed.
Labels are -100 everywhere except the assistant turns (their text and end-of-turn token).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature

from facellm.tools.image_io import ImageLoadError, LoadedImage, as_loaded
from facellm.tools.schema import Face, FaceAnalysis
from facellm.vision.base import PreprocessConfig, VisionInputs, layout_images, preprocess_images

from .configuration import REGION_GROUPS, REGION_PARSE_LABELS, FaceLLMConfig

PROCESSOR_CONFIG = "processor_config.json"
IGNORE_INDEX = -100
_IMAGE_SLOT = "\x00FACELLM_IMAGE\x00"  # stands in for an image inside the rendered text until it is expanded


class ImageInputError(ValueError):
    """An image part of a message cannot be used (remote URL, malformed data URI, missing image)."""


@dataclass
class ProcessorSettings:
    """What the processor needs from the model config and the vision tower; saved as processor_config.json."""

    preprocess: dict = field(default_factory=lambda: PreprocessConfig().to_dict())
    stride: int = 16
    image_token: str = "<image>"
    face_token: str = "<face>"
    use_region_encoder: bool = True
    regions: list[str] = field(default_factory=lambda: list(REGION_GROUPS))
    tokens_per_face: int = 10
    use_identity_token: bool = False
    bias_type: str = "proximity"
    max_faces: int = 8
    geometry_points: int = 478
    max_region_points: int = 48
    # "facellm": FaceLLM's ChatML + Hermes tool-call template (facellm.toolcall.CHAT_TEMPLATE), the one the
    # training traces, the server's tool parser and the agent share; "lm": keep the LM's own template.
    chat_template: str = "facellm"
    patch_pool: int = 1  # the LM's patch tokens: the feature grid average-pooled by this factor

    def __post_init__(self) -> None:
        self.preprocess = PreprocessConfig(**self.preprocess).to_dict()  # JSON lists -> the config's tuples
        self.regions = list(self.regions)

    @classmethod
    def from_model(cls, config: FaceLLMConfig, preprocess: PreprocessConfig, stride: int) -> "ProcessorSettings":
        return cls(preprocess=preprocess.to_dict(), stride=int(stride), image_token=config.image_token,
                   face_token=config.face_token, use_region_encoder=config.use_region_encoder,
                   regions=list(config.regions), tokens_per_face=config.face_tokens,
                   use_identity_token=config.use_identity_token, bias_type=config.bias_type,
                   max_faces=config.max_faces, geometry_points=config.geometry_points,
                   max_region_points=config.max_region_points, chat_template=config.chat_template,
                   patch_pool=getattr(config, "patch_pool", 1))

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(**self.preprocess)

    @property
    def grid(self) -> tuple[int, int]:
        h, w = self.preprocess_config.size
        return math.ceil(h / self.stride), math.ceil(w / self.stride)

    @property
    def token_grid(self) -> tuple[int, int]:
        """The patch-token grid the LM sees: ``grid`` pooled by ``patch_pool`` (ceil, like the model's pool)."""
        gh, gw = self.grid
        return math.ceil(gh / self.patch_pool), math.ceil(gw / self.patch_pool)

    @property
    def analysis_steps(self) -> tuple[str, ...]:
        steps = ["mesh"]
        if self.use_identity_token:
            steps.append("embedding")
        if self.bias_type == "mask":
            steps.append("parse")
        return tuple(steps)


def add_special_tokens(tokenizer, image_token: str, face_token: str) -> tuple[int, int]:
    """Add the placeholder tokens (if missing) and give a pad token; returns (image_token_id, face_token_id)."""
    missing = [t for t in (image_token, face_token) if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(image_token), tokenizer.convert_tokens_to_ids(face_token)


def load_image_source(source: Any) -> LoadedImage:
    """A message's image (data URI, path, file:// URL, PIL, array, bytes) -> LoadedImage; remote URLs refused."""
    if isinstance(source, str):
        s = source.strip()
        if s.lower().startswith(("http://", "https://", "ftp://")):
            raise ImageInputError(f"remote image URLs are not fetched (offline by design): {s[:80]}; "
                                  "download the image and pass a file path or a data: URI")
        if s.startswith("data:"):
            head, _, payload = s.partition(",")
            if not payload or ";base64" not in head:
                raise ImageInputError("a data URI image must look like data:image/png;base64,<data>")
            try:
                data = base64.b64decode(payload, validate=False)
            except (binascii.Error, ValueError) as err:
                raise ImageInputError(f"the data URI's base64 payload is malformed: {err}") from None
            return as_loaded(data)
        if s.startswith("file://"):
            s = s[len("file://"):]
        return as_loaded(s)
    if source is None:
        raise ImageInputError("an image part has no image")
    return as_loaded(source)


def _part_image(part: dict) -> Any:
    """The image object of an OpenAI-style content part, or None when it refers to the ``images`` argument."""
    if part.get("type") == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not url:
            raise ImageInputError("an image_url part needs image_url.url")
        return url
    for key in ("image", "path", "url"):
        if part.get(key) is not None:
            return part[key]
    return None


def _region_points(face: Face, region: str) -> np.ndarray:
    """A region's landmark points (P, 2) in original pixels, with coarse fallbacks when a group is missing."""
    pts = [np.asarray(face.groups[g], np.float64).reshape(-1, 2) for g in REGION_GROUPS[region] if face.groups.get(g)]
    if pts:
        return np.concatenate(pts)
    box = face.box
    k = np.asarray(face.kpts5, np.float64).reshape(-1, 2)
    corners = np.array([[box.x1, box.y1], [box.x2, box.y1], [box.x2, box.y2], [box.x1, box.y2]])
    if len(k) == 5:
        by_region = {"right_eye": k[[0]], "left_eye": k[[1]], "nose": k[[2]], "mouth": k[[3, 4]],
                     "right_brow": k[[0]] - [0, 0.12 * box.height], "left_brow": k[[1]] - [0, 0.12 * box.height]}
        if region in by_region:
            return by_region[region]
    if region == "forehead":
        return np.array([[box.x1, box.y1], [box.x2, box.y1], [box.x2, box.y1 + 0.25 * box.height],
                         [box.x1, box.y1 + 0.25 * box.height]])
    if region == "jaw":
        return np.array([[box.x1, box.y1 + 0.6 * box.height], [box.x2, box.y1 + 0.6 * box.height],
                         [(box.x1 + box.x2) / 2, box.y2]])
    return corners


def _geometry(face: Face, n_points: int) -> np.ndarray:
    """The mesh, relative to the face box: ((x - cx) / w, (y - cy) / h, z / w), zeros where missing."""
    out = np.zeros((n_points, 3), np.float32)
    if face.mesh478 is None:
        return out.ravel()
    p = np.asarray([tuple(q) + (0.0,) * (3 - len(q)) for q in face.mesh478.points], np.float64)[:n_points, :3]
    (cx, cy), w, h = face.box.center, max(face.box.width, 1.0), max(face.box.height, 1.0)
    out[: len(p)] = np.stack([(p[:, 0] - cx) / w, (p[:, 1] - cy) / h, p[:, 2] / w], axis=-1)
    return out.ravel()


def _region_masks(face: Face, regions: list[str], vis: VisionInputs, index: int, stride: int,
                  grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (R, gh, gw) of each region's parser labels per grid cell, and which regions have a mask."""
    from facellm.tools.parser import decode_label_map

    gh, gw = grid
    cov = np.zeros((len(regions), gh, gw), np.float32)
    valid = np.zeros(len(regions), bool)
    if face.parse is None:
        return cov, valid
    lm = decode_label_map(face.parse)
    ys, xs = np.nonzero(lm)
    if len(ys) == 0:
        return cov, valid
    labels = lm[ys, xs]
    g = vis.to_grid(np.stack([xs + face.parse.box.x1 + 0.5, ys + face.parse.box.y1 + 0.5], -1), index, stride).numpy()
    ix, iy = np.floor(g[:, 0]).astype(int), np.floor(g[:, 1]).astype(int)
    inside = (ix >= 0) & (ix < gw) & (iy >= 0) & (iy < gh)
    sx, sy = vis.transforms[index, 0].item(), vis.transforms[index, 1].item()
    area = sx * sy / stride ** 2  # of one original pixel, in grid cells
    names = face.parse.labels
    for r, region in enumerate(regions):
        ids = [names.index(n) for n in REGION_PARSE_LABELS[region] if n in names]
        sel = inside & np.isin(labels, ids)
        if ids and sel.any():
            np.add.at(cov[r], (iy[sel], ix[sel]), area)
            valid[r] = True
    return np.clip(cov, 0.0, 1.0), valid


def _position_word(face: Face, width: int) -> str:
    x = face.box.center[0] / max(width, 1)
    return "left" if x < 1 / 3 else ("right" if x > 2 / 3 else "middle")


def select_faces(analysis: FaceAnalysis, max_faces: int) -> list[Face]:
    """The ``max_faces`` most confident faces, kept in the analysis' left-to-right order."""
    faces = list(analysis.faces)
    if len(faces) > max_faces:
        keep = sorted(sorted(range(len(faces)), key=lambda i: -faces[i].score)[:max_faces])
        faces = [faces[i] for i in keep]
    return faces


class FaceLLMBatch(BatchFeature):
    """The processor's output: model inputs (``**batch`` goes to the model) plus ``analyses`` per image."""

    analyses: list[FaceAnalysis | None]

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return dict(self.data)


class FaceLLMProcessor:
    """Tokenizer + image preprocessing + face tools, configured by ``ProcessorSettings``."""

    def __init__(self, tokenizer, settings: ProcessorSettings, analyzer=None) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.image_token_id, self.face_token_id = add_special_tokens(tokenizer, settings.image_token,
                                                                     settings.face_token)
        self._analyzer = analyzer
        if settings.chat_template == "facellm":
            from facellm.toolcall import CHAT_TEMPLATE

            tokenizer.chat_template = CHAT_TEMPLATE
        elif settings.chat_template != "lm":
            raise ValueError(f"chat_template must be 'facellm' or 'lm', not {settings.chat_template!r}")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; FaceLLM needs one to format conversations")

    # ---------------------------------------------------------------- persistence
    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        (folder / PROCESSOR_CONFIG).write_text(json.dumps({"processor_class": "FaceLLMProcessor",
                                                           **asdict(self.settings)}, indent=1))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "FaceLLMProcessor":
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / PROCESSOR_CONFIG).is_file():
            raise FileNotFoundError(f"{folder} has no {PROCESSOR_CONFIG}: not a FaceLLM model folder")
        data = json.loads((folder / PROCESSOR_CONFIG).read_text())
        data.pop("processor_class", None)
        return cls(AutoTokenizer.from_pretrained(folder), ProcessorSettings(**data), **kwargs)

    # ---------------------------------------------------------------- the face tools
    def analyze(self, image: LoadedImage) -> FaceAnalysis:
        if self._analyzer is None:
            from facellm.tools.analyze import get_analyzer

            self._analyzer = get_analyzer()
        return self._analyzer.analyze(image, steps=self.settings.analysis_steps, max_faces=self.settings.max_faces)

    # ---------------------------------------------------------------- messages -> text with image slots
    def _render_messages(self, messages: Sequence[dict], images: list, pending: list) -> list[dict]:
        """String contents with an image slot per image part; image objects appended to ``images``."""
        out = []
        reserved = (self.settings.image_token, self.settings.face_token)
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ValueError(f"each message must be a dict with 'role' and 'content', got {m!r:.80}")
            content = m.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else (content or [])
            pieces = []
            for part in parts:
                if isinstance(part, str):
                    part = {"type": "text", "text": part}
                kind = part.get("type")
                if kind == "text":
                    text = part.get("text") or ""
                    if any(t in text for t in reserved) or _IMAGE_SLOT in text:
                        raise ValueError(f"message text may not contain the reserved tokens {reserved}")
                    pieces.append(text)
                elif kind in ("image_url", "image"):
                    src = _part_image(part)
                    if src is None:
                        if not pending:
                            raise ImageInputError("an image part has no image and no images= are left to fill it")
                        src = pending.pop(0)
                    images.append(src)
                    pieces.append(_IMAGE_SLOT)
                else:
                    raise ValueError(f"unsupported content part type {kind!r}; use 'text', 'image_url' or 'image'")
            text = "\n".join(p for p in pieces if p)
            out.append({**{k: v for k, v in m.items() if k != "content"}, "content": text})
        return out

    def _image_text(self, faces: list[Face], width: int, found: int) -> str:
        s = self.settings
        gh, gw = s.token_grid
        text = s.image_token * (gh * gw)
        if s.use_region_encoder:
            for i, f in enumerate(faces, start=1):
                text += f"\nFace {i} ({_position_word(f, width)}): " + s.face_token * s.tokens_per_face
            if found > len(faces):  # the LM should still know how many people there are
                text += f"\n({found} faces found; the {len(faces)} most confident are shown)"
        return text

    def _template(self, messages: list[dict], generation: bool, tools: list[dict] | None = None) -> str:
        if not messages:
            return ""
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, tokenize=False,
                                                  add_generation_prompt=generation)

    def _encode(self, messages: list[dict], add_generation_prompt: bool,
                tools: list[dict] | None = None) -> tuple[list[int], list[int]]:
        """Token ids and labels; assistant content + end-of-turn are labelled, the rest is IGNORE_INDEX."""
        tok = self.tokenizer
        ids: list[int] = []
        labels: list[int] = []
        done = ""

        def add(text: str, learn: bool) -> None:
            if text:
                t = tok(text, add_special_tokens=False)["input_ids"]
                ids.extend(t)
                labels.extend(t if learn else [IGNORE_INDEX] * len(t))

        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._template(messages[:k], True, tools)
            full = self._template(messages[: k + 1], False, tools)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise ValueError("the chat template does not render conversations prefix by prefix; "
                                 "cannot locate the assistant turns for the labels")
            answer = full[len(prefix):]
            core = answer.rstrip("\n")
            add(prefix[len(done):], False)
            add(core, True)
            add(answer[len(core):], False)
            done = full
        final = self._template(messages, add_generation_prompt, tools)
        if not final.startswith(done):
            raise ValueError("the chat template does not render conversations prefix by prefix")
        add(final[len(done):], False)
        return ids, labels

    # ---------------------------------------------------------------- main entry
    def __call__(self, conversations, images: Sequence[Any] | None = None,
                 analyses: Sequence[FaceAnalysis | None] | None = None, *, add_generation_prompt: bool = False,
                 padding_side: str | None = None, return_labels: bool = True,
                 max_length: int | None = None, tools: Sequence | None = None,
                 pixels: bool = True) -> FaceLLMBatch:
        """One conversation (a list of messages), a batch of them, or a plain question string.

        images: fill image parts that carry no image of their own (``{"type": "image"}``), in order.
        analyses: one precomputed FaceAnalysis (or None: run the tools) per image, in order of appearance.
        padding_side: default "left" when ``add_generation_prompt`` (generation), else "right".
        max_length: refuse longer sequences (default: the tokenizer's model_max_length). Nothing is truncated:
            a cut through an image's placeholder span would break the text/image alignment.
        tools: OpenAI-style tool definitions offered in the system turn (the chat template renders them): one
            list for every conversation, or one list (or None) per conversation.
        pixels: False leaves out ``pixel_values`` (the caller brings the tower's features: training's cache).
        """
        if isinstance(conversations, str):
            conversations = [{"role": "user", "content": conversations}]
        if conversations and isinstance(conversations[0], dict):
            conversations = [conversations]
        if not conversations:
            raise ValueError("no conversation given")
        pending = list(images or [])
        sources: list = []
        rendered = [self._render_messages(conv, sources, pending) for conv in conversations]
        if pending:
            raise ImageInputError(f"{len(pending)} image(s) in images= were not referenced by any image part")
        if analyses is not None and len(analyses) != len(sources):
            raise ValueError(f"{len(analyses)} analyses given for {len(sources)} images")

        s = self.settings
        loaded = [load_image_source(src) for src in sources]
        used: list[FaceAnalysis | None] = []
        faces_per_image: list[list[Face]] = []
        for i, img in enumerate(loaded):
            a = analyses[i] if analyses is not None else None
            if a is None and s.use_region_encoder:
                a = self.analyze(img)
            used.append(a)
            faces_per_image.append(select_faces(a, s.max_faces) if (a is not None and s.use_region_encoder) else [])

        # expand each image slot into its placeholder span, then tokenize with labels
        texts = iter([self._image_text(f, img.width, a.num_faces if a is not None else 0)
                      for f, img, a in zip(faces_per_image, loaded, used)])
        if tools and isinstance(tools[0], (list, tuple)) or (tools and tools[0] is None):
            per_conv = list(tools)
            if len(per_conv) != len(rendered):
                raise ValueError(f"{len(per_conv)} tool lists given for {len(rendered)} conversations")
        else:
            per_conv = [list(tools) if tools else None] * len(rendered)
        seqs, labs = [], []
        for conv, conv_tools in zip(rendered, per_conv):
            conv = [{**m, "content": _expand(m["content"], texts)} for m in conv]
            ids, lab = self._encode(conv, add_generation_prompt, conv_tools)
            seqs.append(ids)
            labs.append(lab)

        limit = max_length or getattr(self.tokenizer, "model_max_length", None)
        longest = max(len(x) for x in seqs)
        if limit and limit < 10**7 and longest > limit:
            raise ValueError(f"a conversation is {longest} tokens long, over the limit of {limit}; use fewer or "
                             "smaller images, fewer faces (max_faces) or a shorter conversation")
        side = padding_side or ("left" if add_generation_prompt else "right")
        if side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        length = max(len(x) for x in seqs)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), length), dtype=torch.long)
        labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(zip(seqs, labs)):
            sl = slice(length - len(ids), length) if side == "left" else slice(0, len(ids))
            input_ids[b, sl] = torch.tensor(ids)
            attention[b, sl] = 1
            labels[b, sl] = torch.tensor(lab)
        data: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention}
        if return_labels:
            data["labels"] = labels
        if loaded:
            if pixels:
                vis = preprocess_images(loaded, s.preprocess_config)
                data["pixel_values"] = vis.pixel_values
            else:
                vis = layout_images([(img.height, img.width) for img in loaded], s.preprocess_config)
            data["image_sizes"] = vis.image_sizes
            if s.use_region_encoder:
                data.update(self.face_tensors(faces_per_image, vis, [img.width for img in loaded]))
        batch = FaceLLMBatch(data)
        batch.analyses = used
        return batch

    def face_tensors(self, faces_per_image: list[list[Face]], vis: VisionInputs, widths: list[int]) -> dict:
        """Per-image face data padded to the most faces in the batch (F), in feature-grid coordinates."""
        s = self.settings
        n, nf, r, p = len(faces_per_image), max((len(f) for f in faces_per_image), default=0), len(s.regions), \
            s.max_region_points
        gh, gw = s.grid
        face_mask = torch.zeros(n, nf, dtype=torch.bool)
        points = torch.zeros(n, nf, r, p, 2)
        point_mask = torch.zeros(n, nf, r, p, dtype=torch.bool)
        boxes = torch.zeros(n, nf, 4)
        geometry = torch.zeros(n, nf, s.geometry_points * 3)
        out: dict[str, torch.Tensor] = {}
        identity = torch.zeros(n, nf, 128) if s.use_identity_token else None
        masks = torch.zeros(n, nf, r, gh, gw) if s.bias_type == "mask" else None
        mask_valid = torch.zeros(n, nf, r, dtype=torch.bool) if s.bias_type == "mask" else None
        for i, faces in enumerate(faces_per_image):
            for j, face in enumerate(faces):
                face_mask[i, j] = True
                for k, region in enumerate(s.regions):
                    pts = _region_points(face, region)
                    if len(pts) > p:  # evenly spaced subset, keeps the outline's shape
                        pts = pts[np.linspace(0, len(pts) - 1, p).round().astype(int)]
                    points[i, j, k, : len(pts)] = vis.to_grid(pts, i, s.stride).float()
                    point_mask[i, j, k, : len(pts)] = True
                b = face.box
                boxes[i, j] = vis.to_grid(np.array([[b.x1, b.y1], [b.x2, b.y2]]), i, s.stride).float().reshape(4)
                geometry[i, j] = torch.from_numpy(_geometry(face, s.geometry_points))
                if identity is not None and face.embedding is not None:
                    e = torch.tensor(face.embedding[:128], dtype=torch.float32)
                    identity[i, j, : len(e)] = e
                if masks is not None:
                    cov, valid = _region_masks(face, s.regions, vis, i, s.stride, (gh, gw))
                    masks[i, j] = torch.from_numpy(cov)
                    mask_valid[i, j] = torch.from_numpy(valid)
        out.update(face_mask=face_mask, region_points=points, region_point_mask=point_mask, face_boxes=boxes,
                   face_geometry=geometry)
        if identity is not None:
            out["face_identity"] = identity
        if masks is not None:
            out["region_masks"] = masks
            out["region_mask_valid"] = mask_valid
        return out

    # ---------------------------------------------------------------- decoding
    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=kwargs.pop("skip_special_tokens", True), **kwargs)

    def batch_decode(self, ids, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=kwargs.pop("skip_special_tokens", True), **kwargs)


def _expand(text: str, spans) -> str:
    while _IMAGE_SLOT in text:
        text = text.replace(_IMAGE_SLOT, next(spans), 1)
    return text
