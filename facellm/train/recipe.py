"""Training recipes: TOML files naming the model, the data mixture and the optimisation of each stage.

A recipe is a base model (``[model]``: FaceLLMConfig fields) and one or more stages run in order, each
starting from the previous stage's output folder::

    name = "default"
    seed = 0
    data = "~/.cache/facellm/data/offline"          # data_gen output folder(s); --data overrides

    [model]                                         # FaceLLMConfig fields for a fresh model
    lm_name_or_path = "smollm2-135m-instruct"

    [[stage]]
    name = "align"                                  # stage 1: projector + region encoder, LM frozen
    train = ["projector", "region_encoder"]
    mixture = { facecaption = 1.0 }                 # style -> weight (x records per epoch; 0.5 = half of them)
    lr = 1e-3
    ...

Built-in recipes live in ``facellm/train/recipes/*.toml``: ``facellm train --recipe default``.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

RECIPES_DIR = Path(__file__).parent / "recipes"
TRAINABLE_PARTS = ("projector", "region_encoder", "lora", "lm", "vision_tower")


class RecipeError(ValueError):
    """A recipe file is missing, malformed, or names something that does not exist."""


@dataclass
class StageRecipe:
    name: str
    kind: str = "lm"  # "lm": next-token loss on records; "tower": tune the vision tower on human face labels
    train: list[str] = field(default_factory=lambda: ["projector", "region_encoder"])
    mixture: dict[str, float] = field(default_factory=lambda: {"facecaption": 1.0})
    epochs: float = 1.0  # passes over the mixture; max_steps wins when set
    max_steps: int | None = None
    batch_size: int = 4  # per device
    grad_accum: int = 1
    max_length: int = 1024  # longer examples are skipped (never cut: that would split an image's tokens)
    lr: float = 1e-3
    lr_parts: dict[str, float] = field(default_factory=dict)  # per-part overrides, e.g. {lora = 2e-4}
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant
    max_grad_norm: float = 1.0
    lora: dict | None = None  # {r, alpha, dropout, target_modules} when "lora" is in train
    load_in_4bit: bool = False  # QLoRA
    eval_every: int = 50  # steps; 0 = only at the end
    eval_items: int = 32  # held-out records for the loss / answer check
    save_every: int = 25  # checkpoint interval in steps
    save_minutes: float = 5.0  # ... and at least this often in wall time
    keep_checkpoints: int = 2
    pack: int = 1  # up to this many records about one image in one multi-turn conversation (1 = no packing)
    pack_styles: list[str] = field(default_factory=lambda: ["fairfacegpt", "faceinstruct", "facecaption"])
    group_by_length: bool = True  # batch_size > 1: batches of similar length (less padding)
    log_every: int = 25  # steps between plain progress lines (loss, records/h, ETA)
    # from this stage on the model has attribute tokens (facellm.attribute_tokens): the tower stage's head, frozen
    attribute_tokens: bool = False
    # only records whose perceived age / gender / expression answers rest on a human label: a tool's guess (the
    # age of a 48 px FER2013 face) contradicts the attribute tokens and teaches the LM to ignore them
    human_attributes_only: bool = False

    def __post_init__(self) -> None:
        bad = [p for p in self.train if p not in TRAINABLE_PARTS]
        if bad:
            raise RecipeError(f"stage {self.name!r}: unknown part(s) {bad} in train; use {TRAINABLE_PARTS}")
        if "lora" in self.train and "lm" in self.train:
            raise RecipeError(f"stage {self.name!r}: train either 'lora' or the full 'lm', not both")
        if self.load_in_4bit and "lora" not in self.train:
            raise RecipeError(f"stage {self.name!r}: load_in_4bit (QLoRA) needs 'lora' in train")
        if not self.mixture or any(w < 0 for w in self.mixture.values()):
            raise RecipeError(f"stage {self.name!r}: mixture needs at least one style with a weight >= 0")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise RecipeError(f"stage {self.name!r}: schedule must be cosine, linear or constant")
        if self.kind not in ("lm", "tower"):
            raise RecipeError(f"stage {self.name!r}: kind must be 'lm' or 'tower', not {self.kind!r}")
        if self.kind == "tower" and self.train != ["vision_tower"]:
            raise RecipeError(f"stage {self.name!r}: a tower stage trains exactly ['vision_tower']")
        if self.pack < 1:
            raise RecipeError(f"stage {self.name!r}: pack must be >= 1")
        if self.attribute_tokens and self.kind != "lm":
            raise RecipeError(f"stage {self.name!r}: attribute_tokens is for an LM stage after a tower stage")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise RecipeError(f"stage {self.name!r}: batch_size and grad_accum must be >= 1")


@dataclass
class Recipe:
    name: str
    stages: list[StageRecipe]
    model: dict = field(default_factory=dict)  # FaceLLMConfig fields
    data: list[str] = field(default_factory=list)  # data_gen output folders
    seed: int = 0
    mixed_precision: str = "auto"  # auto: bf16 autocast on a GPU or a CPU with amx_bf16/avx512_bf16, else fp32
    description: str = ""
    analysis_cache: list[str] = field(default_factory=list)  # more folders of data_gen tool analyses (sha256.json)
    feature_cache: bool = True  # cache the frozen vision tower's features per image
    feature_cache_dir: str | None = None  # default $FACELLM_HOME/cache/features

    @classmethod
    def load(cls, name_or_path: str | Path) -> "Recipe":
        """A built-in recipe by name (``default``, ``tiny``, ``gpu-large``) or a TOML file."""
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            builtin = RECIPES_DIR / f"{name_or_path}.toml"
            if not builtin.is_file():
                known = sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))
                raise RecipeError(f"no recipe {name_or_path!r}: not a file, and not one of the built-in {known}")
            path = builtin
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"{path}: not valid TOML: {err}") from None
        return cls.from_dict(raw, where=str(path))

    @classmethod
    def from_dict(cls, raw: dict, where: str = "recipe") -> "Recipe":
        raw = dict(raw)
        stages = raw.pop("stage", None) or raw.pop("stages", None)
        if not stages:
            raise RecipeError(f"{where}: no [[stage]] tables")
        known_stage = {f.name for f in fields(StageRecipe)}
        parsed = []
        for i, st in enumerate(stages):
            unknown = set(st) - known_stage
            if unknown:
                raise RecipeError(f"{where}: stage {i + 1} has unknown key(s) {sorted(unknown)}")
            if "name" not in st:
                raise RecipeError(f"{where}: stage {i + 1} needs a name")
            parsed.append(StageRecipe(**st))
        for i, st in enumerate(parsed):
            if st.attribute_tokens and not any(p.kind == "tower" for p in parsed[:i]):
                raise RecipeError(f"{where}: stage {st.name!r} adds attribute tokens, which read the attribute head "
                                  "of a tower stage: put a kind = \"tower\" stage before it")
        names = [s.name for s in parsed]
        if len(set(names)) != len(names):
            raise RecipeError(f"{where}: stage names must be unique, got {names}")
        data = raw.pop("data", [])
        data = [data] if isinstance(data, str) else list(data)
        if isinstance(raw.get("analysis_cache"), str):
            raw["analysis_cache"] = [raw["analysis_cache"]]
        if raw.get("mixed_precision", "auto") not in ("auto", "bf16", "fp16", "no", "fp32"):
            raise RecipeError(f"{where}: mixed_precision must be auto, bf16, fp16 or no (fp32)")
        known = {f.name for f in fields(cls)} - {"stages", "data"}
        unknown = set(raw) - known
        if unknown:
            raise RecipeError(f"{where}: unknown top-level key(s) {sorted(unknown)}")
        return cls(stages=parsed, data=data, **raw)

    def to_dict(self) -> dict:
        return asdict(self)
