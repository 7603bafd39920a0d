"""The FaceLLM config as vLLM needs it: the LM's own config attached as ``text_config``.

FaceLLM's config.json references its LM by name or path (``lm_name_or_path``: the default LM's name, a folder,
``lm/`` inside the model folder after a merge, or a hub id already in the local cache). vLLM sizes its KV
cache and builds the LM from ``text_config``, so this subclass resolves that reference when it is first asked.
The vocabulary is widened to hold FaceLLM's ``<image>`` / ``<face>`` tokens.
"""

from __future__ import annotations

from pathlib import Path

from facellm.configuration import FaceLLMConfig

_CACHE = "_facellm_text_config"


def lm_folder(config: FaceLLMConfig, model_dir: str | Path | None = None) -> Path:
    """The LM folder a FaceLLM config refers to (relative names are looked up inside the model folder)."""
    from facellm.lm import DEFAULT_LM, default_lm_dir

    base = Path(model_dir or config.name_or_path or ".")
    name = config.lm_name_or_path
    if (base / name / "config.json").is_file():
        return base / name
    if name.lower() == DEFAULT_LM:
        folder = default_lm_dir()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"the default LM is not prepared at {folder}: run `facellm setup` first")
        return folder
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path
    from huggingface_hub import snapshot_download

    try:  # a hub id: only what is already in the local cache
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # noqa: BLE001 - any hub error means "not available offline"
        raise FileNotFoundError(f"the LM {name!r} of {base} is neither a folder nor in the local HF cache") from err


class FaceLLMVllmConfig(FaceLLMConfig):
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        out = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        cfg = out[0] if isinstance(out, tuple) else out
        if not cfg.name_or_path:  # AutoConfig records the folder; the class method alone does not
            cfg.name_or_path = str(pretrained_model_name_or_path)
        return out

    @property
    def text_config(self):
        cfg = self.__dict__.get(_CACHE)
        if cfg is None:
            from transformers import AutoConfig

            cfg = AutoConfig.from_pretrained(str(lm_folder(self)))
            ids = [i for i in (self.image_token_id, self.face_token_id) if i is not None]
            cfg.vocab_size = max([cfg.vocab_size] + [i + 1 for i in ids])
            self.__dict__[_CACHE] = cfg
        return cfg

    def to_dict(self):
        out = super().to_dict()
        out.pop(_CACHE, None)
        return out


def register_config() -> None:
    """Make AutoConfig (which vLLM uses) build FaceLLMVllmConfig for model_type "facellm"."""
    from transformers import AutoConfig

    AutoConfig.register("facellm", FaceLLMVllmConfig, exist_ok=True)
