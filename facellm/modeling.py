"""FaceLLM: vision tower -> face-region encoder -> projector -> any causal LM, LLaVA-style.

    model = FaceLLMForConditionalGeneration(FaceLLMConfig())       # default: EfficientNet-Lite0 + SmolLM2-135M
    print(model.chat((image, "How many people are in this photo?")))
    batch = model.processor(conversations)                           # training: labels on assistant turns only
    loss = model(**batch).loss
    model.save_pretrained("runs/x"); FaceLLMForConditionalGeneration.from_pretrained("runs/x")

Forward: the processor puts placeholder tokens (<image> per patch, <face> per face token) into the text; here
their embeddings are replaced, in reading order, by the projected visual tokens of each image:
[patch tokens, face 1 tokens, face 2 tokens, ...]. Everything after that is the LM's own forward / generate
(with ``inputs_embeds``, so its KV cache, sampling, stop strings and streamers all work unchanged).

Model folder (``save_pretrained``): config.json (model_type "facellm"), model.safetensors with the new
modules only (region encoder, projector, the placeholder tokens' embedding rows; the tower if it was trained),
lora/ (the peft adapter, if any), lm/ (only when the LM itself changed: full fine-tuning or ``merge``), and the
processor + tokenizer files. The base LM and tower are referenced by name or path, so the folder stays small.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .attribute_tokens import AttributeTokens, attribute_word_ids
from .configuration import FaceLLMConfig
from .lora import LORA_DIR, add_lora, apply_trainable, bnb_4bit_config, is_peft, load_lora
from .processor import IGNORE_INDEX, FaceLLMProcessor, ProcessorSettings
from .projector import Projector
from .region_encoder import RegionEncoder

WEIGHTS = "model.safetensors"
LM_DIR = "lm"
FACE_KEYS = ("face_mask", "region_points", "region_point_mask", "face_geometry", "face_identity", "region_masks",
             "region_mask_valid", "face_boxes")


def _register_auto() -> None:
    """Let AutoConfig read a FaceLLM config.json (idempotent)."""
    from transformers import AutoConfig

    try:
        AutoConfig.register("facellm", FaceLLMConfig)
    except ValueError:
        pass


_register_auto()


def _dtype(name: str) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    return getattr(torch, str(name).replace("torch.", ""))


class FaceLLMForConditionalGeneration(nn.Module):
    config_class = FaceLLMConfig

    def __init__(self, config: FaceLLMConfig, *, vision_tower=None, lm=None, tokenizer=None,
                 init_lora: bool = True) -> None:
        """Build from a config; pass ``vision_tower`` / ``lm`` + ``tokenizer`` to reuse loaded ones."""
        super().__init__()
        from facellm.vision import VisionTowerConfig, build_vision_tower

        self.config = config
        if vision_tower is None:
            vision_tower = build_vision_tower(VisionTowerConfig.from_dict({**config.vision,
                                                                          "frozen": config.freeze_vision}))
        self.vision_tower = vision_tower
        if lm is None:
            lm, tokenizer = self.load_base_lm(config)
        elif tokenizer is None:
            raise ValueError("pass the LM's tokenizer along with the LM")
        settings = ProcessorSettings.from_model(config, vision_tower.preprocess_config, vision_tower.stride)
        self.processor = FaceLLMProcessor(tokenizer, settings)
        config.image_token_id = self.processor.image_token_id
        config.face_token_id = self.processor.face_token_id
        self._fit_vocab(lm, len(tokenizer))
        config.lm_hidden_size = lm.config.hidden_size
        self.lm = lm
        vis_dim = vision_tower.hidden_size
        self.region_encoder = RegionEncoder(config, vis_dim) if config.use_region_encoder else None
        in_dim = config.region_dim if config.use_region_encoder else vis_dim
        self.projector = Projector(in_dim, lm.config.hidden_size, config.projector_hidden,
                                   out_rms=self._word_rms() if config.projector_norm else None)
        self.attribute_tokens = None
        if config.attribute_tokens:
            self.enable_attribute_tokens()
        if config.lora and init_lora:
            self.lm = add_lora(self.lm, config.lora)
        apply_trainable(self)

    def _word_rms(self) -> float:
        """The RMS of the LM's word embeddings (what the projector's outputs are scaled to, projector_norm)."""
        w = self.lm.get_input_embeddings().weight.detach().float()
        return float(w.pow(2).mean(-1).sqrt().mean())

    def enable_projector_norm(self) -> None:
        """Normalise the projector's outputs from now on (a training stage after one without it)."""
        self.config.projector_norm = True
        self.projector.enable_norm(self._word_rms())

    def enable_attribute_tokens(self, head_state: dict[str, torch.Tensor] | None = None) -> None:
        """Add the attribute tokens (``facellm.attribute_tokens``; frozen) with the tower stage's head weights.
        The processor then writes 8 more <face> placeholders per face."""
        if not self.config.use_region_encoder:
            raise ValueError("attribute tokens follow the face tokens: they need use_region_encoder")
        self.config.attribute_tokens = True
        if not self.config.attribute_word_ids:
            self.config.attribute_word_ids = attribute_word_ids(self.tokenizer)
        self.attribute_tokens = AttributeTokens(self.vision_tower.hidden_size, self.config.attribute_word_ids)
        if head_state is not None:
            self.attribute_tokens.head.load_state_dict(head_state, strict=True)
        self.attribute_tokens.requires_grad_(False)
        self.processor.settings.tokens_per_face = self.config.face_tokens

    def _embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        """The LM's input embeddings of token ids (the attribute tokens are made of them)."""
        return self.lm.get_input_embeddings()(ids.to(self.device))

    # ---------------------------------------------------------------- building blocks
    @staticmethod
    def load_base_lm(config: FaceLLMConfig, folder: str | Path | None = None):
        """(lm, tokenizer) from ``config.lm_name_or_path`` (relative paths: inside ``folder``)."""
        from facellm.lm import load_lm

        name = config.lm_name_or_path
        if folder is not None and (Path(folder) / name).is_dir():
            name = str(Path(folder) / name)
        kwargs = {}
        if config.load_in_4bit:
            dt = _dtype(config.lm_dtype)
            kwargs["quantization_config"] = bnb_4bit_config(torch.float32 if dt == "auto" else dt)
        return load_lm(name, dtype=config.lm_dtype, **kwargs)

    def _fit_vocab(self, lm, vocab: int) -> None:
        """Make room for the placeholder tokens; new rows start at the mean embedding (never fed as inputs:
        the placeholders are replaced; only the output side would ever see them)."""
        emb = lm.get_input_embeddings()
        if emb.weight.shape[0] >= vocab:
            return
        old = emb.weight.shape[0]
        lm.resize_token_embeddings(vocab, mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None}.values():
                layer.weight[old:] = layer.weight[:old].mean(0, keepdim=True).to(layer.weight.dtype)

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def placeholder_rows(self) -> dict[str, torch.Tensor]:
        """The embedding rows of <image> / <face> (input side, and output side when untied)."""
        ids = torch.tensor([self.config.image_token_id, self.config.face_token_id])
        inp = self.lm.get_input_embeddings().weight
        out = {"lm_token_rows.input": inp[ids].detach().cpu().contiguous()}
        head = self.lm.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != inp.data_ptr() and head.weight.shape[0] > int(ids.max()):
            out["lm_token_rows.output"] = head.weight[ids].detach().cpu().contiguous()
        return out

    # ---------------------------------------------------------------- forward
    def encode_images(self, pixel_values: torch.Tensor | None = None, face_mask: torch.Tensor | None = None,
                      vision_features: torch.Tensor | None = None, **face_data: torch.Tensor | None
                      ) -> list[torch.Tensor]:
        """Per image, its projected tokens (N + faces * T, hidden) in placeholder order.

        ``vision_features``: the frozen tower's feature maps (B, C, H', W'), computed beforehand (the
        trainer's feature cache); then ``pixel_values`` is not needed."""
        if vision_features is not None:
            fmap = vision_features.to(self.projector.fc1.weight.device)
            grid = tuple(fmap.shape[-2:])
            tokens = fmap.flatten(2).transpose(1, 2)
        else:
            out = self.vision_tower(pixel_values.to(self.vision_tower.device))
            tokens, grid = out.tokens, tuple(out.feature_map.shape[-2:])
        dev = self.projector.fc1.weight.device
        if self.region_encoder is None:
            tokens = self._pool_patches(tokens.to(dev), grid)
            proj = self.projector(tokens.to(dev, self.projector.fc1.weight.dtype))
            return list(proj)
        b = tokens.shape[0]
        if face_mask is None:  # no face data: every image as a face-less one
            face_mask = torch.zeros(b, 0, dtype=torch.bool)
            nr, p = len(self.config.regions), self.config.max_region_points
            face_data = {"region_points": torch.zeros(b, 0, nr, p, 2),
                         "region_point_mask": torch.zeros(b, 0, nr, p, dtype=torch.bool)}
        kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in face_data.items()}
        patches, faces = self.region_encoder(
            tokens.to(dev), grid, face_mask=face_mask.to(dev),
            region_points=kw["region_points"], region_point_mask=kw["region_point_mask"],
            geometry=kw.get("face_geometry"), identity=kw.get("face_identity"),
            region_masks=kw.get("region_masks"), region_mask_valid=kw.get("region_mask_valid"))
        patches = self._pool_patches(patches, grid)
        proj_p, proj_f = self.projector(patches), self.projector(faces)
        if getattr(self, "attribute_tokens", None) is not None and proj_f.shape[1]:
            fmap = tokens.transpose(1, 2).reshape(b, -1, *grid).to(dev)
            attr = self.attribute_tokens(fmap.to(self.attribute_tokens.head.proj.weight.dtype), kw["face_boxes"],
                                         self._embed_words)
            proj_f = torch.cat([proj_f, attr.to(proj_f.device, proj_f.dtype)], dim=2)
        fm = face_mask.to(dev)
        return [torch.cat([proj_p[i], proj_f[i][fm[i]].flatten(0, 1)]) for i in range(b)]

    def _pool_patches(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, gh*gw, d) -> (B, ceil(gh/k)*ceil(gw/k), d), averaged over k x k cells (``config.patch_pool``)."""
        k = getattr(self.config, "patch_pool", 1)
        if k <= 1:
            return tokens
        b, _, d = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, d, *grid)
        pooled = nn.functional.avg_pool2d(fmap, k, k, ceil_mode=True)
        return pooled.flatten(2).transpose(1, 2)

    def get_inputs_embeds(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                          vision_features: torch.Tensor | None = None, **face_data) -> torch.Tensor:
        """Token embeddings with every <image> / <face> placeholder replaced by the visual tokens."""
        input_ids = input_ids.to(self.device)
        embed = self.lm.get_input_embeddings()
        embeds = embed(input_ids)
        slots = (input_ids == self.config.image_token_id) | (input_ids == self.config.face_token_id)
        n_slots = int(slots.sum())
        if pixel_values is None and vision_features is None:
            if n_slots:
                raise ValueError(f"{n_slots} image/face placeholder tokens but no pixel_values")
            return embeds
        face_data = {k: face_data.get(k) for k in FACE_KEYS if face_data.get(k) is not None}
        visual = torch.cat(self.encode_images(pixel_values, vision_features=vision_features, **face_data)).to(embeds.device, embeds.dtype)
        if visual.shape[0] != n_slots:
            raise ValueError(f"the text has {n_slots} placeholder tokens but the images give {visual.shape[0]} "
                             "tokens: process text and images together with model.processor")
        return embeds.masked_scatter(slots[..., None], visual)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, vision_features: torch.Tensor | None = None, loss_only: bool = False, **kwargs):
        """Like an HF causal LM: returns the LM's output (``loss`` when ``labels`` are given, ``logits``).
        ``vision_features``: precomputed frozen-tower feature maps instead of running the tower on pixels.
        ``loss_only`` (training): logits only at the positions whose next token is labelled in some row — the
        vocabulary projection of every position is most of a step's memory (4 x 3072 tokens x 49k vocab, fp32,
        is 2.4 GB per copy) and a fifth of its compute; the loss is the same mean over the labelled tokens."""
        face_data = {k: kwargs.pop(k) for k in FACE_KEYS if k in kwargs}
        embeds = self.get_inputs_embeds(input_ids, pixel_values, vision_features=vision_features, **face_data)
        if labels is not None:
            labels = labels.to(embeds.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(embeds.device)
        if loss_only and labels is not None:
            target = labels[:, 1:]
            keep = (target != IGNORE_INDEX).any(0).nonzero().squeeze(1)  # the same positions for every row
            out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=keep, **kwargs)
            logits = out.logits.float()
            out.loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   target[:, keep].reshape(-1), ignore_index=IGNORE_INDEX)
            return out
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, *, max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 0.7, top_p: float = 0.9, top_k: int | None = None,
                 stop_strings: str | list[str] | None = None, streamer=None, labels=None, image_sizes=None,
                 tool_names: list[str] | None = None, **kwargs) -> torch.Tensor:
        """New token ids (B, <= max_new_tokens), through the LM's own generate (KV cache) on inputs_embeds.
        Pad the batch on the left (the processor does with ``add_generation_prompt=True``)."""
        face_data = {k: kwargs.pop(k) for k in FACE_KEYS if k in kwargs}
        embeds = self.get_inputs_embeds(input_ids, pixel_values, **face_data)
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        tok = self.tokenizer
        gen: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        if do_sample:
            gen.update(temperature=temperature, top_p=top_p)
            if top_k is not None:
                gen["top_k"] = top_k
        if stop_strings:
            gen.update(stop_strings=stop_strings, tokenizer=tok)
        if tool_names:  # a tool call may only name one of these (facellm.constrained)
            from .constrained import ToolNameConstraint

            gen["prefix_allowed_tokens_fn"] = ToolNameConstraint(tok, tool_names)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask.to(embeds.device),
                                streamer=streamer, **gen, **kwargs)

    def _chat_batch(self, messages, image=None, analyses=None, tools=None):
        if isinstance(messages, tuple):
            image, messages = messages
        if isinstance(messages, str):
            content = ([{"type": "image", "image": image}] if image is not None else []) + \
                [{"type": "text", "text": messages}]
            messages = [{"role": "user", "content": content}]
        elif image is not None:
            raise ValueError("pass the image inside the messages, or a (image, question) pair")
        return self.processor(messages, analyses=analyses, add_generation_prompt=True, return_labels=False,
                              tools=tools)

    def chat(self, messages, image=None, *, analyses=None, tools=None, **gen_kwargs) -> str:
        """One answer: ``chat((image, "question"))``, ``chat("question", image=img)`` or ``chat(messages)``.
        ``tools``: OpenAI tool definitions offered to the model (its answer may then hold ``<tool_call>``
        blocks: parse them with ``facellm.toolcall.parse_tool_calls``)."""
        batch = self._chat_batch(messages, image, analyses, tools)
        if tools and "tool_names" not in gen_kwargs:
            from .constrained import tool_names

            gen_kwargs["tool_names"] = tool_names(tools)
        out = self.generate(**batch, **gen_kwargs)
        text = self.processor.decode(out[0])
        return _cut_at_stop(text, gen_kwargs.get("stop_strings")).strip()

    def stream(self, messages, image=None, *, analyses=None, tools=None, **gen_kwargs) -> Iterator[str]:
        """Yield the answer in text pieces as it is generated (transformers' TextIteratorStreamer + a thread)."""
        from transformers import TextIteratorStreamer

        batch = self._chat_batch(messages, image, analyses, tools)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.generate(**batch, streamer=streamer, **gen_kwargs)
            except BaseException as err:  # re-raised in the caller's thread
                errors.append(err)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if errors:
            raise errors[0]

    # ---------------------------------------------------------------- persistence
    def new_module_state(self) -> dict[str, torch.Tensor]:
        state = {}
        for prefix, module in (("region_encoder", self.region_encoder), ("projector", self.projector),
                               ("attribute_tokens", self.attribute_tokens)):
            if module is not None:
                state.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()})
        if not self.config.freeze_vision or self.config.vision_tuned:  # its weights are no longer the package's
            state.update({f"vision_tower.{k}": v.detach().cpu().contiguous()
                          for k, v in self.vision_tower.feature_state_dict().items()})
        state.update(self.placeholder_rows())
        return state

    def save_pretrained(self, folder: str | Path, *, save_lm: bool | None = None) -> Path:
        """Write the model folder. ``save_lm``: also write the LM's full weights to ``lm/`` (default: only when
        the LM itself was trained without LoRA; ``merge`` forces it)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if save_lm is None:
            save_lm = not self.config.freeze_lm and not is_peft(self.lm)
        if save_lm:
            if is_peft(self.lm):
                raise ValueError("merge the LoRA adapter first (facellm.lora.merge) to save the LM's full weights")
            if self.config.load_in_4bit:
                raise ValueError("a 4-bit LM is not saved in full; train LoRA on it, then merge")
            self.lm.save_pretrained(folder / LM_DIR, safe_serialization=True)
            self.tokenizer.save_pretrained(folder / LM_DIR)
            self.config.lm_name_or_path = LM_DIR
        if is_peft(self.lm):
            self.lm.save_pretrained(folder / LORA_DIR, save_embedding_layers=False)
        save_file(self.new_module_state(), str(folder / WEIGHTS), metadata={"format": "pt"})
        self.processor.save_pretrained(folder)
        self.config.architectures = [type(self).__name__]
        self.config.save_pretrained(folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, trainable: bool = False, **overrides
                        ) -> "FaceLLMForConditionalGeneration":
        """Load a model folder. ``overrides`` replace config fields (e.g. ``lm_dtype="bfloat16"``,
        ``load_in_4bit=True``); ``trainable`` keeps a LoRA adapter trainable."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} has no config.json: not a FaceLLM model folder")
        config = FaceLLMConfig.from_pretrained(folder)
        for k, v in overrides.items():
            if not hasattr(config, k):
                raise ValueError(f"unknown FaceLLM config field {k!r}")
            setattr(config, k, v)
        lm, _ = cls.load_base_lm(config, folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = cls(config, lm=lm, tokenizer=tokenizer, init_lora=False)
        state = load_file(str(folder / WEIGHTS))
        model._load_new_modules(state)
        if config.lora:
            if not (folder / LORA_DIR / "adapter_config.json").is_file():
                raise FileNotFoundError(f"{folder} says it has a LoRA adapter, but {LORA_DIR}/adapter_config.json "
                                        "is missing")
            model.lm = load_lora(model.lm, folder / LORA_DIR, trainable=trainable)
            apply_trainable(model, lora_trainable=trainable)
        return model.eval()

    def _load_new_modules(self, state: dict[str, torch.Tensor]) -> None:
        for prefix, module in (("region_encoder", self.region_encoder), ("projector", self.projector),
                               ("vision_tower", self.vision_tower), ("attribute_tokens", self.attribute_tokens)):
            part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
            if module is None or (prefix == "vision_tower" and not part):
                continue
            if prefix == "vision_tower":
                module.load_feature_state_dict(part)
            else:
                module.load_state_dict(part, strict=True)
        ids = torch.tensor([self.config.image_token_id, self.config.face_token_id])
        with torch.no_grad():
            inp = self.lm.get_input_embeddings().weight
            inp[ids] = state["lm_token_rows.input"].to(inp.dtype)
            if "lm_token_rows.output" in state:
                head = self.lm.get_output_embeddings().weight
                head[ids] = state["lm_token_rows.output"].to(head.dtype)


def _cut_at_stop(text: str, stops) -> str:
    if not stops:
        return text
    for s in [stops] if isinstance(stops, str) else stops:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


FaceLLM = FaceLLMForConditionalGeneration  # the short name used in the issue and the docs

__all__ = ["FaceLLM", "FaceLLMConfig", "FaceLLMForConditionalGeneration", "IGNORE_INDEX"]
