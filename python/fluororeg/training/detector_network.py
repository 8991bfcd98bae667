"""The landmark detector's networks (plain torch, no model zoo).

Two architectures:

* ``arch='resnet'`` (:class:`ResNetRegressor`) — the paper's network: a ResNet-18-like
  regressor (basic blocks, widths ``w, 2w, 4w, 8w`` with ``w = width``; ``width=64`` gives about
  11 M trainable parameters for 33 landmarks), global average pooling and a linear layer with
  ``2 L`` outputs: the landmarks in network coordinates. It has no confidence of its own: its
  ``confidence`` output is 1.
* ``arch='heatmap'`` (:class:`HeatmapNet`) — a lighter ResNet encoder with a small
  feature-pyramid decoder that produces one heatmap per landmark at 1/``heatmap_stride`` of the
  input resolution; a spatial softmax and its expectation (soft-argmax, integral regression)
  give the coordinates, and the probability mass in the 3 x 3 cells around the peak gives a
  per-landmark confidence in [0, 1].

Both take ``x`` [n, 1, N, N] (uint8 images mapped to ``x / 127.5 - 1``) and return
``(landmarks [n, L, 2] network coordinates of the N-pixel input, confidence [n, L])``
(:mod:`fluororeg.inference.coordinates`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fluororeg.training.detector_config import DetectorConfig

__all__ = ["BasicBlock", "ResNetRegressor", "HeatmapNet", "build_model", "count_parameters"]


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


def _stage(cin, cout, n, stride):
    return nn.Sequential(BasicBlock(cin, cout, stride), *[BasicBlock(cout, cout, 1) for _ in range(n - 1)])


class ResNetRegressor(nn.Module):
    """ResNet-18 layout: 7x7/2 stem, max-pool, 4 stages of basic blocks, avg-pool, linear."""

    def __init__(self, width: int, blocks, n_landmarks: int):
        super().__init__()
        w, B, L = int(width), tuple(blocks), int(n_landmarks)
        self.n_landmarks = L
        self.stem = nn.Sequential(nn.Conv2d(1, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        self.layer1 = _stage(w, w, B[0], 1)
        self.layer2 = _stage(w, 2 * w, B[1], 2)
        self.layer3 = _stage(2 * w, 4 * w, B[2], 2)
        self.layer4 = _stage(4 * w, 8 * w, B[3], 2)
        self.fc = nn.Linear(8 * w, 2 * L)
        nn.init.zeros_(self.fc.bias)
        nn.init.normal_(self.fc.weight, std=1e-3)

    def forward(self, x):
        y = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        y = self.fc(torch.flatten(torch.mean(y, dim=(2, 3), keepdim=True), 1))
        lm = y.view(-1, self.n_landmarks, 2)
        return lm, torch.ones_like(lm[..., 0])


class HeatmapNet(nn.Module):
    """Encoder (3x3/2 stem, stages at strides 2, 4, 8, 16), top-down decoder with lateral
    connections to stride ``S``, 1x1 head to L heatmaps, soft-argmax."""

    def __init__(self, width: int, blocks, n_landmarks: int, input_size: int, heatmap_stride: int):
        super().__init__()
        w, B, L, N, S = int(width), tuple(blocks), int(n_landmarks), int(input_size), int(heatmap_stride)
        self.n_landmarks = L
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True))
        self.layer1 = _stage(w, w, B[0], 1)            # /2
        self.layer2 = _stage(w, 2 * w, B[1], 2)        # /4
        self.layer3 = _stage(2 * w, 4 * w, B[2], 2)    # /8
        self.layer4 = _stage(4 * w, 8 * w, B[3], 2)    # /16
        d = 2 * w
        self.lat4 = nn.Conv2d(8 * w, d, 1)
        self.lat3 = nn.Conv2d(4 * w, d, 1)
        self.lat2 = nn.Conv2d(2 * w, d, 1)
        self.lat1 = nn.Conv2d(w, d, 1) if S == 2 else None
        self.smooth = nn.Sequential(nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True),
                                    nn.Conv2d(d, d, 3, 1, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(d, L, 1)
        M = N // S
        # Cell centres in input pixels: p = j S + (S - 1) / 2, in network coordinates.
        c = (torch.arange(M, dtype=torch.float32) * S + (S - 1) / 2 - (N - 1) / 2) / ((N - 1) / 2)
        self.register_buffer("grid", c, persistent=False)

    def forward(self, x):
        L = self.n_landmarks
        f1 = self.layer1(self.stem(x))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        y = self.lat4(f4)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat3(f3)
        y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat2(f2)
        if self.lat1 is not None:
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lat1(f1)
        h = self.head(self.smooth(y))                      # [n, L, M, M]
        n_, _, M1, M2 = h.shape
        p = torch.softmax(h.reshape(n_, L, M1 * M2), dim=-1).reshape(n_, L, M1, M2)
        px = p.sum(dim=2)                                  # [n, L, M2] marginal over rows
        py = p.sum(dim=3)                                  # [n, L, M1]
        xs = (px * self.grid[:M2]).sum(-1)
        ys = (py * self.grid[:M1]).sum(-1)
        conf = F.avg_pool2d(p, 3, 1, 1, count_include_pad=True) * 9.0
        conf = conf.reshape(n_, L, M1 * M2).amax(dim=-1)
        return torch.stack([xs, ys], dim=-1), conf.clamp(0.0, 1.0)


def build_model(config: DetectorConfig, n_landmarks: int) -> nn.Module:
    """The torch module of ``config`` for ``n_landmarks``; ``forward(x [n,1,N,N])`` returns
    ``(landmarks [n, L, 2] network coordinates, confidence [n, L])``."""
    if n_landmarks < 1:
        raise ValueError(f"n_landmarks {n_landmarks}: expected >= 1")
    if config.arch == "resnet":
        return ResNetRegressor(config.width, config.blocks, n_landmarks)
    return HeatmapNet(config.width, config.blocks, n_landmarks, config.input_size, config.heatmap_stride)


def count_parameters(model) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
