"""Vision towers: the EfficientNet-Lite0 port on real photos, preprocessing geometry, HF CLIP / SigLIP loading,
and the OpenCLIP converter checked against an independent OpenCLIP-layout reference model."""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from skimage import data
from torch import nn

from facellm.tools.photos import photo
from facellm.vision import (
    STAGE_NAMES,
    PreprocessConfig,
    VisionConfigError,
    VisionModelNotFoundError,
    VisionTowerConfig,
    build_vision_tower,
    convert_openclip_checkpoint,
    grid_centers,
    load_openclip_vision,
    preprocess_images,
)
from facellm.vision.efficientnet import LITE_MEAN, LITE_STD, STAGE_CHANNELS, STAGE_STRIDES
from facellm.vision.openclip import OpenClipArch, load_checkpoint_file

CAT_IDS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_IDS = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def effnet():
    return build_vision_tower("efficientnet-lite0")


# ------------------------------------------------------------------ EfficientNet-Lite0
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_efficientnet_classifies_real_photos(effnet, mode):
    # ImageNet evaluation crop (shorter side 256, centre 224) and our default letterbox both must work
    cfg = PreprocessConfig(size=(224, 224), mode=mode, mean=LITE_MEAN, std=LITE_STD,
                           crop_from=256 if mode == "crop" else None)
    batch = preprocess_images([data.chelsea(), data.coffee()], cfg)
    probs = effnet.classify(batch.pixel_values).softmax(-1)
    cat, coffee = probs[0], probs[1]
    assert int(cat.argmax()) in CAT_IDS and float(cat[list(CAT_IDS)].sum()) > 0.8
    assert int(coffee.argmax()) in COFFEE_IDS and float(coffee[list(COFFEE_IDS)].sum()) > 0.8


def test_efficientnet_stages_shapes_and_strides(effnet):
    x = effnet.preprocess(data.chelsea()).pixel_values
    for stage in STAGE_NAMES:
        fmap = effnet.net(x, stage)
        assert fmap.shape == (1, STAGE_CHANNELS[stage], 224 // STAGE_STRIDES[stage], 224 // STAGE_STRIDES[stage])
    out = effnet(x)  # default stage5
    assert out.feature_map.shape == (1, 112, 14, 14) and out.tokens.shape == (1, 196, 112)
    assert effnet.num_tokens() == 196 and effnet.hidden_size == 112 and effnet.stride == 16
    # tokens are the feature map flattened row by row
    assert torch.equal(out.tokens[0, 14 * 3 + 5], out.feature_map[0, :, 3, 5])
    head = build_vision_tower("efficientnet-lite0", feature="head", image_size=256)
    out = head(head.preprocess(data.coffee()))
    assert out.feature_map.shape == (1, 1280, 8, 8) and head.grid_size() == (8, 8)


def test_efficientnet_non_square_input(effnet):
    out = effnet(torch.zeros(2, 3, 224, 320))
    assert out.feature_map.shape == (2, 112, 14, 20) and effnet.grid_size((224, 320)) == (14, 20)


def test_frozen_and_trainable():
    frozen = build_vision_tower("efficientnet-lite0")
    frozen.train()
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    x = frozen.preprocess(data.chelsea()).pixel_values
    assert frozen(x).feature_map.grad_fn is None
    trainable = build_vision_tower("efficientnet-lite0", frozen=False, feature="stage3")
    trainable.train()
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    trainable(x).tokens.mean().backward()
    assert trainable.net._conv_stem.weight.grad is not None


# ------------------------------------------------------------------ preprocessing
@pytest.fixture(scope="module")
def marked_group():
    """The 1280x886 group photo with a solid magenta square painted at a known place near the right edge."""
    img = Image.open(photo("group")).convert("RGB")
    ImageDraw.Draw(img).rectangle([1150, 100, 1229, 179], fill=(255, 0, 255))
    return img


@pytest.mark.parametrize("mode", ["pad", "squash", "crop"])
def test_transform_maps_original_points_onto_the_input(marked_group, mode):
    cfg = PreprocessConfig(size=(224, 224), mode=mode, mean=(0, 0, 0), std=(1, 1, 1), crop_from=256)
    batch = preprocess_images(marked_group, cfg)
    u, v = batch.to_input(np.array([1190.0, 140.0]), 0).tolist()  # centre of the square
    if mode == "crop":
        assert not (0 <= u < 224)  # the centre crop of a wide photo drops the right edge: why "pad" is our default
        return
    rgb = batch.pixel_values[0, :, int(v), int(u)]
    assert torch.allclose(rgb, torch.tensor([1.0, 0.0, 1.0]), atol=0.05)
    assert tuple(batch.image_sizes[0].tolist()) == (886, 1280)
    # the original corners map onto the content area (pad: centred vertically, full width)
    corners = batch.to_input(np.array([[0.0, 0.0], [1280.0, 886.0]]), 0)
    if mode == "pad":
        assert corners[0, 0] == 0 and corners[1, 0] == 224 and 0 < corners[0, 1] < corners[1, 1] < 224
        assert torch.all(batch.pixel_values[0, :, : int(corners[0, 1]) - 1] == 0)  # padding is exactly zero
    grid = batch.to_grid(np.array([1190.0, 140.0]), 0, stride=16)
    assert torch.allclose(grid * 16, torch.tensor([u, v], dtype=torch.float64))


def test_preprocess_matches_transformers_image_processors(marked_group):
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    ours = preprocess_images(marked_group, PreprocessConfig(size=224, mode="crop", mean=(0.48145466, 0.4578275,
                             0.40821073), std=(0.26862954, 0.26130258, 0.27577711))).pixel_values
    ref = CLIPImageProcessorPil()(images=marked_group, return_tensors="pt")["pixel_values"]
    assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=1e-5)
    ours = preprocess_images(marked_group, PreprocessConfig(size=224, mode="squash", mean=(0.5,) * 3,
                                                            std=(0.5,) * 3)).pixel_values
    ref = SiglipImageProcessorPil()(images=marked_group, return_tensors="pt")["pixel_values"]
    assert torch.allclose(ours, ref, atol=1e-5)


def test_input_kinds_agree(effnet):
    arr = data.astronaut()
    pil = Image.fromarray(arr)
    ref = effnet.preprocess(arr).pixel_values
    for other in (pil, photo("astronaut"), torch.from_numpy(arr).permute(2, 0, 1),
                  torch.from_numpy(arr).permute(2, 0, 1).float() / 255):
        assert torch.allclose(effnet.preprocess(other).pixel_values, ref, atol=1e-6)
    assert effnet.preprocess([arr, pil, arr]).pixel_values.shape == (3, 3, 224, 224)


@pytest.mark.parametrize("bad, match", [
    (lambda t: t.preprocess(torch.zeros(224, 224)), "tensor image"),
    (lambda t: t.preprocess([]), "no images"),
    (lambda t: t(torch.zeros(1, 224, 224)), "B, 3, H, W"),
    (lambda t: build_vision_tower("efficientnet-lite0", feature="stage9"), "unknown EfficientNet stage"),
    (lambda t: build_vision_tower("efficientnet-lite0", resize_mode="stretch"), "resize mode"),
    (lambda t: build_vision_tower("efficientnet-lite0", colour=True), "unknown vision tower option"),
])
def test_bad_inputs_raise_clear_errors(effnet, bad, match):
    with pytest.raises(VisionConfigError, match=match):
        bad(effnet)


def test_grid_centers():
    c = grid_centers((2, 3), 16)
    assert c.shape == (6, 2) and c[0].tolist() == [8, 8] and c[5].tolist() == [40, 24]


# ------------------------------------------------------------------ transformers CLIP / SigLIP
TINY_VIT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=32,
                patch_size=8)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                              SiglipVisionConfig, SiglipVisionModel)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf")
    clip = CLIPVisionModel(CLIPVisionConfig(**TINY_VIT)).eval()
    clip.save_pretrained(root / "clip")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                          image_mean=[0.4, 0.4, 0.4]).save_pretrained(root / "clip")
    full = CLIPModel(CLIPConfig(vision_config=TINY_VIT, text_config=dict(hidden_size=32, intermediate_size=64,
                     num_hidden_layers=1, num_attention_heads=4, vocab_size=99, bos_token_id=0, eos_token_id=1,
                     pad_token_id=1), projection_dim=16)).eval()
    full.save_pretrained(root / "clip_full")
    siglip = SiglipVisionModel(SiglipVisionConfig(**TINY_VIT)).eval()
    siglip.save_pretrained(root / "siglip")
    return root, clip, full, siglip


def test_hf_clip_tower_matches_direct_model(tiny_hf):
    root, clip, _, _ = tiny_hf
    tower = build_vision_tower(str(root / "clip"))
    assert tower.family == "clip" and tower.frozen and tower.stride == 8 and tower.hidden_size == 32
    assert tower.preprocess_config.mean == (0.4, 0.4, 0.4)  # read from the folder's preprocessor_config.json
    x = tower.preprocess(data.astronaut()).pixel_values
    out = tower(x)
    ref = clip(x, output_hidden_states=True)
    assert out.feature_map.shape == (1, 32, 4, 4) and out.tokens.shape == (1, 16, 32)
    assert torch.allclose(out.tokens, ref.hidden_states[-2][:, 1:], atol=1e-6)  # LLaVA's layer, CLS dropped
    assert torch.allclose(out.pooled, ref.pooler_output, atol=1e-6)
    # other sizes interpolate the position embeddings
    big = build_vision_tower(str(root / "clip"), image_size=48, feature=-1)
    out = big(big.preprocess(data.astronaut()))
    assert out.feature_map.shape == (1, 32, 6, 6)


def test_hf_full_clip_folder_and_siglip(tiny_hf):
    root, _, full, siglip = tiny_hf
    tower = build_vision_tower(str(root / "clip_full"))
    x = torch.randn(2, 3, 32, 32)
    ref = full.vision_model(x, output_hidden_states=True)
    assert torch.allclose(tower(x).tokens, ref.hidden_states[-2][:, 1:], atol=1e-6)
    sig = build_vision_tower(str(root / "siglip"))
    assert sig.family == "siglip" and sig.preprocess_config.mean == (0.5, 0.5, 0.5)
    out = sig(x)
    ref = siglip(x, output_hidden_states=True)
    assert out.tokens.shape == (2, 16, 32)  # no class token in SigLIP
    assert torch.allclose(out.tokens, ref.hidden_states[-1], atol=1e-6)
    assert torch.allclose(out.pooled, ref.pooler_output, atol=1e-6)


def test_hf_errors(tiny_hf, monkeypatch, tmp_path):
    root = tiny_hf[0]
    with pytest.raises(VisionConfigError, match="out of range"):
        build_vision_tower(str(root / "clip"), feature=7)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VisionModelNotFoundError, match="HF_HUB_OFFLINE"):
        build_vision_tower("nobody-here/clip-vit-none")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(VisionConfigError, match="not a supported vision tower"):
        build_vision_tower(str(tmp_path))


# ------------------------------------------------------------------ OpenCLIP
class _RefBlock(nn.Module):
    """OpenCLIP's ResidualAttentionBlock: pre-LN, torch's MultiheadAttention, MLP c_fc -> GELU -> c_proj."""

    def __init__(self, width: int, heads: int, mlp: int, quick_gelu: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, mlp), gelu=nn.GELU(), c_proj=nn.Linear(mlp, width)))
        self.quick_gelu = quick_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        return x + self.mlp.c_proj(h)


class _RefTransformer(nn.Module):
    def __init__(self, width, layers, heads, mlp, quick_gelu):
        super().__init__()
        self.resblocks = nn.ModuleList([_RefBlock(width, heads, mlp, quick_gelu) for _ in range(layers)])


class _RefVisual(nn.Module):
    """OpenCLIP's VisionTransformer (class-token pooling), written from its definition, random weights."""

    def __init__(self, width=64, layers=2, heads=4, patch=8, image=32, embed=24, quick_gelu=False):
        super().__init__()
        grid = image // patch
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * 0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) * 0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _RefTransformer(width, layers, heads, 4 * width, quick_gelu)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed) * width ** -0.5)
        for ln in [self.ln_pre, self.ln_post] + [m for m in self.modules() if isinstance(m, nn.LayerNorm)]:
            nn.init.normal_(ln.weight, 1.0, 0.2)  # non-trivial norms, so a swapped LN would show
            nn.init.normal_(ln.bias, 0.0, 0.2)
        for m in self.modules():
            if isinstance(m, nn.MultiheadAttention):
                nn.init.normal_(m.in_proj_bias, 0.0, 0.2)

    def forward(self, x: torch.Tensor):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        for block in self.transformer.resblocks:
            x = block(x)
        last = x
        x = self.ln_post(x)
        return last, x[:, 0] @ self.proj


class _RefClip(nn.Module):
    """visual.* plus a stand-in text part, as in a full OpenCLIP checkpoint (the converter must skip it)."""

    def __init__(self, **kw):
        super().__init__()
        self.visual = _RefVisual(**kw)
        self.token_embedding = nn.Embedding(10, 8)
        self.transformer = _RefTransformer(8, 1, 2, 16, False)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x)


TINY_ARCH = OpenClipArch(width=64, layers=2, patch_size=8, image_size=32, embed_dim=24, head_width=16)


@pytest.fixture(scope="module")
def ref_clip():
    torch.manual_seed(1)
    return _RefClip(width=64, layers=2, heads=4, patch=8, image=32, embed=24).eval()


@pytest.mark.parametrize("fmt", ["safetensors", "bin", "wrapped", "torchscript"])
def test_openclip_conversion_matches_reference(ref_clip, tmp_path, fmt):
    x = torch.randn(3, 3, 32, 32)
    sd = ref_clip.state_dict()
    path = tmp_path / f"ckpt.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "bin":
        torch.save(sd, path)
    elif fmt == "wrapped":  # a training checkpoint: {"state_dict": {"module.visual...": ...}, "epoch": ...}
        torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    else:
        with warnings.catch_warnings():  # tracing is deprecated and chatty; OpenAI still ships such files
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(ref_clip, x, check_trace=False), str(path))
    assert set(load_checkpoint_file(path)) == set(sd)
    model = load_openclip_vision(path, TINY_ARCH)
    with torch.no_grad():
        last, embeds = ref_clip(x)
        out = model.vision_model(x, output_hidden_states=True)
        got_embeds = model.visual_projection(out.pooler_output)
    assert torch.allclose(out.hidden_states[-1], last, atol=1e-5)
    assert torch.allclose(got_embeds, embeds, atol=1e-5)


def test_openclip_tower_by_name_and_saved_folder(ref_clip, tmp_path):
    import facellm.vision.openclip as oc

    path = tmp_path / "open_clip_model.bin"
    torch.save(ref_clip.state_dict(), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        last, embeds = ref_clip(x)
    oc.OPENCLIP_ARCHS["Tiny-test"] = TINY_ARCH  # register a name as a user would for a custom config
    try:
        tower = build_vision_tower("open_clip:Tiny-test", checkpoint=str(path), feature=-1)
        by_file = build_vision_tower(str(path), architecture="Tiny-test", feature=-1)
        folder = convert_openclip_checkpoint(path, tmp_path / "hf", "Tiny-test")
    finally:
        del oc.OPENCLIP_ARCHS["Tiny-test"]
    reloaded = build_vision_tower(str(folder), feature=-1)
    for t in (tower, by_file, reloaded):
        out = t(x)
        assert out.feature_map.shape == (2, 64, 4, 4)
        assert torch.allclose(out.tokens, last[:, 1:], atol=1e-5)
        assert torch.allclose(out.image_embeds, embeds, atol=1e-5)
    assert tower.preprocess_config.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def test_openclip_quickgelu_and_errors(tmp_path):
    torch.manual_seed(2)
    ref = _RefClip(width=64, layers=1, heads=2, patch=8, image=32, embed=16, quick_gelu=True).eval()
    sd = ref.state_dict()
    x = torch.randn(1, 3, 32, 32)
    arch = OpenClipArch(64, 1, 8, 32, 16, head_width=32, quick_gelu=True)
    model = load_openclip_vision(sd, arch)
    with torch.no_grad():
        assert torch.allclose(model(x).image_embeds, ref(x)[1], atol=1e-5)
        wrong = load_openclip_vision(sd, OpenClipArch(64, 1, 8, 32, 16, head_width=32))  # plain GELU
        assert not torch.allclose(wrong(x).image_embeds, ref(x)[1], atol=1e-3)
    with pytest.raises(VisionConfigError, match="does not match ViT-B-16"):
        load_openclip_vision(sd, "ViT-B-16")
    with pytest.raises(VisionConfigError, match="unknown OpenCLIP architecture"):
        load_openclip_vision(sd, "ViT-Q-99")
    with pytest.raises(VisionConfigError, match="unsupported tensors"):
        load_openclip_vision({**sd, "visual.attn_pool.query": torch.zeros(4, 64)})
    with pytest.raises(VisionConfigError, match="exactly one ViT"):
        load_openclip_vision({k: v for k, v in sd.items() if not k.startswith("visual.")})
    with pytest.raises(VisionConfigError, match="needs checkpoint"):
        build_vision_tower("open_clip:ViT-B-16")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VisionConfigError, match="cannot read"):
        load_checkpoint_file(tmp_path / "junk.pt")


def test_config_round_trip():
    cfg = VisionTowerConfig(name="efficientnet-lite0", feature="stage4", image_size=256)
    again = VisionTowerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    tower = build_vision_tower(again)
    assert tower.config == cfg and tower.grid_size() == (16, 16) and tower.hidden_size == 80


def test_hf_layout_checkpoint_file_with_prefix(tiny_hf, tmp_path):
    """A single file holding transformers-layout CLIP weights under a prefix (as FaceCaption's FLIP does)."""
    full = tiny_hf[2]
    path = tmp_path / "flip_like.pth"
    torch.save({"model": {"visual_encoder." + k: v for k, v in full.state_dict().items()}}, path)
    arch = OpenClipArch(width=32, layers=3, patch_size=8, image_size=32, embed_dim=16, head_width=8, quick_gelu=True)
    model = load_openclip_vision(path, arch)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = full.vision_model(x, output_hidden_states=True)
        out = model.vision_model(x, output_hidden_states=True)
        assert torch.allclose(out.hidden_states[-1], ref.hidden_states[-1], atol=1e-6)
        assert torch.allclose(model.visual_projection(out.pooler_output), full.visual_projection(ref.pooler_output),
                              atol=1e-6)
    with pytest.raises(VisionConfigError, match="head width"):
        load_openclip_vision(path)  # 32 wide: the 64-wide default head cannot apply, and the message says so
