"""The landmark detector's loss: MSE in network coordinates over the visible landmarks.

A landmark projected outside the image has no meaningful target (the paper's MSE over all 66
outputs presumably includes them; we mask them out and report both). With ``perm`` (the
left/right mirror permutation, :func:`fluororeg.subject.sides.mirror_permutation`;
``DetectorConfig.mirror_loss``) the loss of each image is the smaller of the loss against its
labels and against its labels with every left/right pair swapped. It is meant for datasets
whose azimuths cover the full circle: a parallel DRR seen from behind is the mirror image of
one seen from the front, so left and right can then only be told apart from small asymmetries
(the registration resolves the swap anyway: it solves the 4 mirror combinations, see
:mod:`fluororeg.core.registration`). The default datasets see the subject from its front half
only (see :mod:`fluororeg.dataset.generate`), where the labels are a function of the image and
the plain loss is right.
"""

from __future__ import annotations

import torch

__all__ = ["masked_loss"]


def masked_loss(pred, target, visible, perm=None):
    """Per-sample MSE [n] of ``pred`` against ``target`` ([n, L, 2] network coordinates) over
    the ``visible`` [n, L] coordinates; with ``perm`` the min over the two labellings."""
    m = visible.float()[..., None]

    def one(t, mm):
        se = ((pred - t) ** 2 * mm).sum(dim=(1, 2))
        return se / (2 * mm.sum(dim=(1, 2))).clamp_min(1.0)

    loss = one(target, m)
    if perm is not None:
        loss = torch.minimum(loss, one(target[:, perm], m[:, perm]))
    return loss
