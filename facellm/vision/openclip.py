"""OpenCLIP ViT checkpoints -> transformers' CLIPVisionModelWithProjection, without `open_clip`.

`open_clip` (and the timm / torchvision it imports) cannot be installed next to CPU torch here, so its
checkpoints are converted instead. An OpenCLIP ViT is a pre-LN transformer with a class token:

    x = conv1(image) (no bias) -> patches; x = [class_embedding; patches] + positional_embedding
    x = ln_pre(x); per block: x += attn(ln_1(x)); x += mlp(ln_2(x))   (mlp = c_fc -> GELU -> c_proj)
    pooled = ln_post(x)[:, 0]; image_embeds = pooled @ proj

which is exactly transformers' CLIP vision model with renamed tensors and the fused q/k/v projection split
in three. The block count, width, patch and image size are read from the tensors' shapes; the architecture
name supplies what shapes cannot tell (head width, QuickGELU) and is checked against the shapes.

Checkpoints whose vision part is already in transformers' CLIP layout (``...embeddings.patch_embedding.weight``;
e.g. FaceCaption's FLIP, built on transformers' CLIP code) load the same way, after their prefix is stripped.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import VisionConfigError


@dataclass(frozen=True)
class OpenClipArch:
    width: int
    layers: int
    patch_size: int
    image_size: int
    embed_dim: int
    head_width: int = 64
    mlp_ratio: float = 4.0
    quick_gelu: bool = False  # OpenAI's original weights use QuickGELU; LAION / DataComp ones plain GELU


# The ViT towers of open_clip's model configs (``model_configs/<name>.json``).
OPENCLIP_ARCHS: dict[str, OpenClipArch] = {
    "ViT-S-32": OpenClipArch(384, 12, 32, 224, 384),
    "ViT-S-16": OpenClipArch(384, 12, 16, 224, 384),
    "ViT-M-32": OpenClipArch(512, 12, 32, 224, 512),
    "ViT-M-16": OpenClipArch(512, 12, 16, 224, 512),
    "ViT-B-32": OpenClipArch(768, 12, 32, 224, 512),
    "ViT-B-32-256": OpenClipArch(768, 12, 32, 256, 512),
    "ViT-B-16": OpenClipArch(768, 12, 16, 224, 512),
    "ViT-B-16-plus": OpenClipArch(896, 12, 16, 224, 640),
    "ViT-B-16-plus-240": OpenClipArch(896, 12, 16, 240, 640),
    "ViT-L-14": OpenClipArch(1024, 24, 14, 224, 768),
    "ViT-L-14-336": OpenClipArch(1024, 24, 14, 336, 768),
    "ViT-L-16": OpenClipArch(1024, 24, 16, 224, 768),
    "ViT-H-14": OpenClipArch(1280, 32, 14, 224, 1024, head_width=80),
    "ViT-H-16": OpenClipArch(1280, 32, 16, 224, 1024, head_width=80),
    "ViT-g-14": OpenClipArch(1408, 40, 14, 224, 1024, head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": OpenClipArch(1664, 48, 14, 224, 1280, head_width=104, mlp_ratio=4.9231),
}


def _arch_from_open_clip(name: str) -> OpenClipArch | None:
    """Where `open_clip` is importable (not here: it needs torchvision), read any ViT config it knows."""
    try:
        import open_clip  # noqa: PLC0415
    except Exception:
        return None
    cfg = open_clip.get_model_config(name)
    vision = (cfg or {}).get("vision_cfg", {})
    if not cfg or vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        return None  # a timm trunk or a ResNet: not a plain OpenCLIP ViT
    size = vision.get("image_size", 224)
    return OpenClipArch(width=vision["width"], layers=vision["layers"], patch_size=vision["patch_size"],
                        image_size=size[0] if isinstance(size, (list, tuple)) else size, embed_dim=cfg["embed_dim"],
                        head_width=vision.get("head_width", 64), mlp_ratio=vision.get("mlp_ratio", 4.0),
                        quick_gelu=bool(cfg.get("quick_gelu", False)))


def openclip_arch(name: str) -> OpenClipArch:
    """Look up an architecture name; a ``-quickgelu`` suffix selects QuickGELU (OpenAI-trained weights)."""
    base, quick = (name[: -len("-quickgelu")], True) if name.endswith("-quickgelu") else (name, False)
    if base not in OPENCLIP_ARCHS and (found := _arch_from_open_clip(name)) is not None:
        return found
    if base not in OPENCLIP_ARCHS:
        raise VisionConfigError(f"unknown OpenCLIP architecture {name!r}; known ViTs: {', '.join(OPENCLIP_ARCHS)} "
                                "(append -quickgelu for OpenAI-trained weights)")
    arch = OPENCLIP_ARCHS[base]
    return OpenClipArch(**{**arch.__dict__, "quick_gelu": arch.quick_gelu or quick})


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, a torch pickle (.bin/.pt/.pth, loaded with weights_only) or a TorchScript
    archive (OpenAI's original CLIP .pt files). Unwraps {"state_dict": ...} / {"model": ...} and "module." prefixes."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VisionConfigError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    elif _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI's original CLIP files are TorchScript
            warnings.simplefilter("ignore")
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            raise VisionConfigError(f"cannot read {path} as a PyTorch checkpoint: {err}") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise VisionConfigError(f"{path} does not hold a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def find_vision_prefix(sd: dict[str, torch.Tensor]) -> tuple[str, str]:
    """(prefix, layout) of the ViT inside a state dict; layout is "openclip" or "hf"."""
    hits = []
    for key in sd:
        if key.endswith("conv1.weight") and key[: -len("conv1.weight")] + "class_embedding" in sd:
            hits.append((key[: -len("conv1.weight")], "openclip"))
        elif key.endswith("embeddings.patch_embedding.weight"):
            hits.append((key[: -len("embeddings.patch_embedding.weight")], "hf"))
    if len(hits) != 1:
        found = ", ".join(p or "<none>" for p, _ in hits) or "none"
        raise VisionConfigError("expected exactly one ViT image tower in the checkpoint (a 'conv1.weight' + "
                                f"'class_embedding' pair, or 'embeddings.patch_embedding.weight'); found {found}. "
                                "Pass prefix= to pick one.")
    return hits[0]


def _count_layers(sd: dict[str, torch.Tensor], pattern: str) -> int:
    ids = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    if ids != set(range(len(ids))):
        raise VisionConfigError(f"transformer blocks are not numbered 0..n-1: {sorted(ids)}")
    return len(ids)


def openclip_to_hf(sd: dict[str, torch.Tensor], architecture: str | OpenClipArch | None = None,
                   prefix: str | None = None):
    """Convert the vision part of an OpenCLIP (or HF-CLIP-layout) state dict.

    Returns (CLIPVisionConfig, state dict for CLIPVisionModelWithProjection, or for CLIPVisionModel when the
    checkpoint has no projection). Every tensor under the prefix must be used, else it raises: silently dropping
    weights of an unsupported variant (attention pooling, layer scale, ...) would give a wrong model.
    """
    from transformers import CLIPVisionConfig

    if prefix is None:
        prefix, layout = find_vision_prefix(sd)
    else:
        layout = "openclip" if prefix + "conv1.weight" in sd else "hf"
    vis = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not vis:
        raise VisionConfigError(f"no tensors under prefix {prefix!r}")
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in vis:
            raise VisionConfigError(f"the checkpoint lacks {prefix + key!r}")
        used.add(key)
        return vis[key]

    vm = "vision_model."
    if layout == "openclip":
        conv = take("conv1.weight")
        width, patch = conv.shape[0], conv.shape[-1]
        layers = _count_layers(vis, r"transformer\.resblocks\.(\d+)\.")
        out[vm + "embeddings.patch_embedding.weight"] = conv
        out[vm + "embeddings.class_embedding"] = take("class_embedding")
        pos = take("positional_embedding")
        out[vm + "embeddings.position_embedding.weight"] = pos
        for name in ("weight", "bias"):
            out[f"{vm}pre_layrnorm.{name}"] = take(f"ln_pre.{name}")
            out[f"{vm}post_layernorm.{name}"] = take(f"ln_post.{name}")
        mlp = 4 * width
        for i in range(layers):
            src, dst = f"transformer.resblocks.{i}.", f"{vm}encoder.layers.{i}."
            for name in ("weight", "bias"):
                q, k, v = take(src + f"attn.in_proj_{name}").chunk(3, dim=0)
                out[dst + f"self_attn.q_proj.{name}"] = q
                out[dst + f"self_attn.k_proj.{name}"] = k
                out[dst + f"self_attn.v_proj.{name}"] = v
                out[dst + f"self_attn.out_proj.{name}"] = take(src + f"attn.out_proj.{name}")
                out[dst + f"layer_norm1.{name}"] = take(src + f"ln_1.{name}")
                out[dst + f"layer_norm2.{name}"] = take(src + f"ln_2.{name}")
                out[dst + f"mlp.fc1.{name}"] = take(src + f"mlp.c_fc.{name}")
                out[dst + f"mlp.fc2.{name}"] = take(src + f"mlp.c_proj.{name}")
            mlp = out[dst + "mlp.fc1.weight"].shape[0]
        proj = vis.get("proj")
        if proj is not None:
            used.add("proj")
            out["visual_projection.weight"] = proj.t().contiguous()  # x @ proj == Linear(weight=proj.T)
    else:  # already transformers' layout: the prefix ends just before "embeddings."
        for key, value in vis.items():
            if key.endswith("position_ids"):  # a non-persistent buffer that old transformers versions saved
                used.add(key)
            elif key.split(".")[0] in ("embeddings", "encoder", "pre_layrnorm", "post_layernorm"):
                out[vm + key] = value
                used.add(key)
        # CLIPModel keeps the projection beside vision_model, not inside it
        parent = prefix[: -len("vision_model.")] if prefix.endswith("vision_model.") else prefix
        if parent + "visual_projection.weight" in sd:
            out["visual_projection.weight"] = sd[parent + "visual_projection.weight"]
        conv = out[vm + "embeddings.patch_embedding.weight"]
        width, patch = conv.shape[0], conv.shape[-1]
        layers = _count_layers(out, r"vision_model\.encoder\.layers\.(\d+)\.")
        pos = out[vm + "embeddings.position_embedding.weight"]
        mlp = out[f"{vm}encoder.layers.0.mlp.fc1.weight"].shape[0] if layers else 4 * width
    unused = sorted(set(vis) - used)
    if unused:
        raise VisionConfigError(f"unsupported tensors in the vision tower (not a plain CLIP ViT?): "
                                f"{', '.join(prefix + k for k in unused[:8])}{' ...' if len(unused) > 8 else ''}")
    grid = round((pos.shape[0] - 1) ** 0.5)
    if grid * grid + 1 != pos.shape[0]:
        raise VisionConfigError(f"positional embedding of {pos.shape[0]} rows is not a square grid + class token")
    has_proj = "visual_projection.weight" in out
    embed_dim = out["visual_projection.weight"].shape[0] if has_proj else width
    head_width, quick = 64, False
    if architecture:
        arch = architecture if isinstance(architecture, OpenClipArch) else openclip_arch(architecture)
        expect = dict(width=arch.width, layers=arch.layers, patch_size=arch.patch_size,
                      image_size=arch.image_size, embed_dim=arch.embed_dim)
        got = dict(width=width, layers=layers, patch_size=patch, image_size=grid * patch, embed_dim=embed_dim)
        bad = {k: (expect[k], got[k]) for k in expect if expect[k] != got[k] and not (k == "embed_dim" and not has_proj)}
        if bad:
            raise VisionConfigError(f"the checkpoint does not match {architecture}: " +
                                    ", ".join(f"{k} expected {e}, found {g}" for k, (e, g) in bad.items()))
        head_width, quick = arch.head_width, arch.quick_gelu
    if width % head_width:
        raise VisionConfigError(f"width {width} is not a multiple of the head width {head_width}; name the architecture")
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers,
                              num_attention_heads=width // head_width, image_size=grid * patch, patch_size=patch,
                              projection_dim=embed_dim, hidden_act="quick_gelu" if quick else "gelu",
                              layer_norm_eps=1e-5)
    if not has_proj:
        out = {k[len(vm):]: v for k, v in out.items()}  # CLIPVisionModel keeps its modules at the top level
    return config, out


def load_openclip_vision(checkpoint: str | Path | dict, architecture: str | OpenClipArch | None = None, *, prefix: str | None = None,
                         dtype: torch.dtype = torch.float32):
    """Build transformers' CLIP vision model (with projection when the checkpoint has one) from an OpenCLIP file."""
    from transformers import CLIPVisionModel, CLIPVisionModelWithProjection

    sd = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_file(checkpoint)
    config, hf_sd = openclip_to_hf(sd, architecture, prefix)
    cls = CLIPVisionModelWithProjection if "visual_projection.weight" in hf_sd else CLIPVisionModel
    model = cls(config)
    model.load_state_dict({k: v.float() for k, v in hf_sd.items()}, strict=True)
    return model.to(dtype).eval()


def convert_openclip_checkpoint(checkpoint: str | Path, out_dir: str | Path,
                                architecture: str | OpenClipArch | None = None, *,
                                prefix: str | None = None) -> Path:
    """Write the converted tower as a transformers folder (config.json, model.safetensors, preprocessor_config.json),
    which ``build_vision_tower(out_dir)`` then loads like any HF CLIP vision model."""
    from transformers import CLIPImageProcessorPil

    model = load_openclip_vision(checkpoint, architecture, prefix=prefix)
    out = Path(out_dir)
    model.save_pretrained(out)
    size = model.config.image_size
    # open_clip's own preprocessing: OpenAI mean/std, bicubic shortest-edge resize, centre crop
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out)
    return out
