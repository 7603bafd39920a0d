"""FaceLLMConfig: everything needed to rebuild a FaceLLM, saved as the model folder's config.json.

The folder records *references* to the base LM and the vision tower (a name or path), not their weights, so a
fine-tuned folder stays a few MB. A merged folder points ``lm_name_or_path`` at its own ``lm/`` subfolder.
"""

from __future__ import annotations

from transformers import PretrainedConfig

# The face regions the encoder makes one token each for, and the landmark groups (facellm.tools.landmark_groups)
# each is built from. Face-LLaVA used 9 regions from 68 points; ours come from the 478-point mesh.
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "right_eye": ("right_eye", "right_iris"),
    "left_eye": ("left_eye", "left_iris"),
    "right_brow": ("right_brow",),
    "left_brow": ("left_brow",),
    "nose": ("nose", "nose_bridge"),
    "mouth": ("mouth_outer",),
    "jaw": ("jaw",),
    "forehead": ("forehead",),
    "face": ("face_oval",),
}
# Parser labels (facellm.tools.parser.LABELS) that make each region's mask for bias_type="mask"; regions
# without labels (the jaw line) keep the proximity bias.
REGION_PARSE_LABELS: dict[str, tuple[str, ...]] = {
    "right_eye": ("right_eye",),
    "left_eye": ("left_eye",),
    "right_brow": ("right_brow",),
    "left_brow": ("left_brow",),
    "nose": ("nose",),
    "mouth": ("upper_lip", "lower_lip", "mouth_interior"),
    "jaw": (),
    "forehead": ("hair",),
    "face": ("skin", "right_brow", "left_brow", "right_eye", "left_eye", "nose", "upper_lip", "lower_lip",
             "mouth_interior"),
}
BIAS_TYPES = ("proximity", "mask", "none")


class FaceLLMConfig(PretrainedConfig):
    """Configuration of ``FaceLLMForConditionalGeneration``.

    Vision / LM:
      vision: a ``facellm.vision.VisionTowerConfig`` dict (default EfficientNet-Lite0, stage5: 14x14x112).
      lm_name_or_path: "smollm2-135m-instruct", a folder, or a hub id; a relative path is read from the model
        folder (merged folders keep their LM in ``lm/``). lm_dtype: "float32" / "bfloat16" / "auto".
    Region encoder:
      use_region_encoder: False gives a plain LLaVA (patch tokens only, no face tokens in the text).
      region_dim, region_heads, region_layers: width, heads and depth of the region/patch attention blocks.
      regions: region token names (keys of REGION_GROUPS). use_geometry_token / use_identity_token: the extra
        per-face tokens (landmark geometry MLP; 128-d recognizer descriptor through a linear).
      bias_type: "proximity" (-d^2/2 under each region's own Gaussian footprint in grid cells), "mask" (log
        of the parser's region coverage per grid cell; proximity where a region has no mask) or "none".
      max_faces: faces per image that get tokens (the most confident are kept).
      patch_pool: the LM sees the patch grid average-pooled by this factor (2: 7x7 = 49 tokens instead of
        14x14 = 196; the region encoder still works on the full grid, so face tokens keep their detail).
      attribute_tokens: 8 more tokens per face after the region tokens, read as " aged 65, woman, happy": the
        tuned tower's attribute head's perceived age (two digit embeddings), gender and expression
        (probability-weighted word embeddings) between fixed cue-word embeddings,
        ``facellm.attribute_tokens``; attribute_word_ids: their token ids (set from the tokenizer).
    Projector: projector_hidden (None: the LM's hidden size); projector_norm: its outputs RMS-normalised to a
      learned gain that starts at the LM's word-embedding RMS. Training: freeze_vision, vision_tuned (the hash of
      a tower tuned on faces, whose weights the folder then holds; None: the package's weights), freeze_lm (the LM's
      own weights; LoRA adapters train regardless), lora (None or a dict: r, alpha, dropout, target_modules),
      load_in_4bit (QLoRA through bitsandbytes).
    Text: chat_template "facellm" (ChatML + Hermes-style tools, facellm.toolcall.CHAT_TEMPLATE; shared with
      data_gen's traces and the server's tool parser) or "lm" (the LM's own template).
    """

    model_type = "facellm"

    def __init__(
        self,
        vision: dict | None = None,
        lm_name_or_path: str = "smollm2-135m-instruct",
        lm_dtype: str = "float32",
        lm_hidden_size: int | None = None,
        use_region_encoder: bool = True,
        region_dim: int = 256,
        region_heads: int = 4,
        region_layers: int = 1,
        regions: list[str] | None = None,
        use_geometry_token: bool = True,
        use_identity_token: bool = False,
        identity_dim: int = 128,
        geometry_points: int = 478,
        bias_type: str = "proximity",
        max_faces: int = 8,
        max_region_points: int = 48,
        projector_hidden: int | None = None,
        projector_norm: bool = False,
        image_token: str = "<image>",
        face_token: str = "<face>",
        image_token_id: int | None = None,
        face_token_id: int | None = None,
        freeze_vision: bool = True,
        vision_tuned: str | None = None,
        freeze_lm: bool = True,
        lora: dict | None = None,
        load_in_4bit: bool = False,
        chat_template: str = "facellm",
        patch_pool: int = 1,
        attribute_tokens: bool = False,
        attribute_word_ids: dict | None = None,
        **kwargs,
    ) -> None:
        from facellm.vision import VisionTowerConfig

        self.vision = VisionTowerConfig.from_dict(vision or {}).to_dict()
        self.lm_name_or_path = str(lm_name_or_path)
        self.lm_dtype = lm_dtype
        self.lm_hidden_size = lm_hidden_size
        self.use_region_encoder = bool(use_region_encoder)
        self.region_dim = int(region_dim)
        self.region_heads = int(region_heads)
        self.region_layers = int(region_layers)
        self.regions = list(regions or REGION_GROUPS)
        unknown = [r for r in self.regions if r not in REGION_GROUPS]
        if unknown:
            raise ValueError(f"unknown region(s) {unknown}; known: {list(REGION_GROUPS)}")
        if bias_type not in BIAS_TYPES:
            raise ValueError(f"unknown bias_type {bias_type!r}; use one of {BIAS_TYPES}")
        if self.region_dim % self.region_heads:
            raise ValueError(f"region_dim {region_dim} is not a multiple of region_heads {region_heads}")
        if max_faces < 1:
            raise ValueError("max_faces must be at least 1")
        self.use_geometry_token = bool(use_geometry_token)
        self.use_identity_token = bool(use_identity_token)
        self.identity_dim = int(identity_dim)
        self.geometry_points = int(geometry_points)
        self.bias_type = bias_type
        self.max_faces = int(max_faces)
        self.max_region_points = int(max_region_points)
        self.projector_hidden = projector_hidden
        self.projector_norm = bool(projector_norm)
        self.image_token = image_token
        self.face_token = face_token
        self.image_token_id = image_token_id
        self.face_token_id = face_token_id
        self.freeze_vision = bool(freeze_vision)
        self.vision_tuned = vision_tuned
        self.freeze_lm = bool(freeze_lm)
        self.lora = dict(lora) if lora else None
        self.load_in_4bit = bool(load_in_4bit)
        if chat_template not in ("facellm", "lm"):
            raise ValueError(f"chat_template must be 'facellm' (ChatML + Hermes tool calls) or 'lm', not {chat_template!r}")
        self.chat_template = chat_template
        if int(patch_pool) < 1:
            raise ValueError("patch_pool must be >= 1 (1 = every patch token; 2 = a 2x2-pooled grid)")
        self.patch_pool = int(patch_pool)
        self.attribute_tokens = bool(attribute_tokens)
        self.attribute_word_ids = dict(attribute_word_ids) if attribute_word_ids else None
        kwargs.setdefault("architectures", ["FaceLLMForConditionalGeneration"])
        super().__init__(**kwargs)

    @property
    def tokens_per_face(self) -> int:
        """The region encoder's tokens per face: region tokens + the geometry token + the identity token (when on)."""
        return len(self.regions) + int(self.use_geometry_token) + int(self.use_identity_token)

    @property
    def face_tokens(self) -> int:
        """<face> placeholders per face in the text: the region encoder's tokens + the attribute tokens (when on)."""
        from facellm.attribute_tokens import N_ATTRIBUTE_TOKENS

        return self.tokens_per_face + (N_ATTRIBUTE_TOKENS if self.attribute_tokens else 0)
