"""The style translator's networks (Zhu et al. 2017, the CycleGAN reference code), plain torch.

- :class:`ResnetGenerator`: c7s1-w, d2w, d4w, ``blocks`` residual blocks (6 for 128 x 128),
  u2w, uw, c7s1-1, tanh; instance normalisation (no affine, no running statistics),
  reflection padding. ``w = 64`` in the paper preset.
- :class:`PatchDiscriminator`: the 70 x 70 PatchGAN (C64-C128-C256-C512, 4 x 4 convolutions,
  LeakyReLU 0.2, instance normalisation except on the first layer), one score per patch.
"""

from __future__ import annotations

from torch import nn

from fluororeg.training.translator_config import TranslatorConfig

__all__ = ["ResBlock", "ResnetGenerator", "PatchDiscriminator", "init_weights", "build_networks", "GENERATOR_KEYS"]

GENERATOR_KEYS = ("G_xd", "G_dx")  # X-ray -> DRR, DRR -> X-ray (fluororeg.inference.translator.DIRECTIONS' order)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), nn.InstanceNorm2d(ch))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator (see the module docstring); 1 channel in and out."""

    def __init__(self, width: int = 64, blocks: int = 6, channels: int = 1):
        super().__init__()
        w = int(width)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(channels, w, 7), nn.InstanceNorm2d(w), nn.ReLU(True)]
        for m in (1, 2):  # d2w, d4w
            layers += [nn.Conv2d(w * m, w * m * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(w * m * 2),
                       nn.ReLU(True)]
        layers += [ResBlock(w * 4) for _ in range(int(blocks))]
        for m in (4, 2):  # u2w, uw
            layers += [nn.ConvTranspose2d(w * m, w * m // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(w * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        self.width, self.blocks = w, int(blocks)

    def forward(self, x):
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (70 x 70 receptive field with ``layers = 3``)."""

    def __init__(self, width: int = 64, layers: int = 3, channels: int = 1):
        super().__init__()
        w = int(width)
        seq = [nn.Conv2d(channels, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, int(layers)):
            prev, mult = mult, min(2 ** n, 8)
            seq += [nn.Conv2d(w * prev, w * mult, 4, stride=2, padding=1), nn.InstanceNorm2d(w * mult),
                    nn.LeakyReLU(0.2, True)]
        prev, mult = mult, min(2 ** int(layers), 8)
        seq += [nn.Conv2d(w * prev, w * mult, 4, stride=1, padding=1), nn.InstanceNorm2d(w * mult),
                nn.LeakyReLU(0.2, True), nn.Conv2d(w * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*seq)

    def forward(self, x):
        return self.model(x)


def init_weights(module, gain: float = 0.02):
    """CycleGAN's init: N(0, 0.02) weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def build_networks(config: TranslatorConfig) -> dict:
    """The four networks: ``G_xd`` (X-ray -> DRR), ``G_dx`` (DRR -> X-ray), ``D_x``, ``D_d``."""
    nets = {"G_xd": ResnetGenerator(config.gen_width, config.gen_blocks),
            "G_dx": ResnetGenerator(config.gen_width, config.gen_blocks),
            "D_x": PatchDiscriminator(config.disc_width, config.disc_layers),
            "D_d": PatchDiscriminator(config.disc_width, config.disc_layers)}
    for net in nets.values():
        init_weights(net)
    return nets
