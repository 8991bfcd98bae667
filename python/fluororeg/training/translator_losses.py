"""The style translator's losses: the paper's content-preserving loss (Eq. 1) and the image
pool the discriminators' adversarial loss draws old fakes from.

Losses per step (unpaired real X-ray ``rX`` and real DRR ``rD``, 1 x S x S in [-1, 1]); ``G``
maps X-ray -> DRR, ``F`` DRR -> X-ray, fakes ``fD = G(rX)``, ``fX = F(rD)``:

- adversarial (LSGAN, mean squared error): ``(D_D(fD) - 1)^2 + (D_X(fX) - 1)^2``;
  discriminators ``((D(real) - 1)^2 + D(fake)^2) / 2`` on fakes drawn from a pool of the last
  50 fakes (half the time the new fake, half an older one: :class:`ImagePool`);
- cycle (L1, ``lambda_cycle = 10``): ``|F(fD) - rX| + |G(fX) - rD|``;
- content-preserving (Eq. 1, in place of CycleGAN's identity loss, :func:`content_loss`):
  ``l_cp = 1 - (phi(rX, fD) + phi(rD, fX)) / 2`` with ``phi`` the zero-normalised gradient
  correlation (:mod:`.gradient_correlation`, Sobel). Weight ``lambda_cp = 5``: the paper does
  not give one; 5 is the weight of the identity loss it replaces (``0.5 * lambda_cycle``).
  **Polarity**: fluoroscopy shows attenuation dark, our DRRs bright, so a content-preserving
  translation has *negative* gradient correlation with its input. ``xray_polarity = -1``
  (default) flips the X-ray side inside ``phi`` (``phi(-rX, fD)``, ``phi(rD, -fX)``), so
  ``l_cp = 0`` for a perfect, inverted-contrast translation; ``+1`` is Eq. 1 literally, for
  X-ray crops that were inverted beforehand.
"""

from __future__ import annotations

import numpy as np
import torch

from fluororeg.training.gradient_correlation import gradient_correlation_torch

__all__ = ["ImagePool", "content_loss"]


class ImagePool:
    """History of generated images (Shrivastava et al. 2017), as in CycleGAN: until full each
    new fake is stored and returned; then with probability 1/2 a random stored fake is returned
    and replaced by the new one."""

    def __init__(self, size: int = 50, images=None):
        self.size = int(size)
        self.images = list(images or [])

    def query(self, batch, rng: np.random.Generator):
        if self.size == 0:
            return batch
        out = []
        for img in batch.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif rng.random() < 0.5:
                k = int(rng.integers(len(self.images)))
                out.append(self.images[k].clone())
                self.images[k] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)


def content_loss(real_x, fake_d, real_d, fake_x, xray_polarity: int = -1):
    """Eq. 1: ``1 - (phi(rX, fD) + phi(rD, fX)) / 2`` averaged over the batch, with the X-ray
    side multiplied by ``xray_polarity``. Returns ``(loss, phi_xd, phi_dx)`` (tensors)."""
    gc = gradient_correlation_torch
    phi_xd = gc(xray_polarity * real_x, fake_d).mean()
    phi_dx = gc(real_d, xray_polarity * fake_x).mean()
    return 1.0 - 0.5 * (phi_xd + phi_dx), phi_xd, phi_dx
