"""Shared fixtures: small analytic phantoms, real CT, and dual-fluoroscope views."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.subject.example import headsq_path
from fluororeg.core.geometry import ConeView
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume

MU = 0.02  # attenuation inside the phantoms, 1/mm


def supersampled(shape_zyx, spacing, inside, ss=10) -> Volume:
    """Partial-volume voxelisation of a convex analytic body (model mm, volume centred on the
    origin): each voxel holds MU times the fraction of its ss^3 sub-samples inside. Only
    voxels near the surface (corners disagree, dilated by one voxel) are sub-sampled."""
    from scipy.ndimage import binary_dilation

    nz, ny, nx = shape_zyx
    sp = np.asarray(spacing, dtype=float)
    centre = (np.array([nx, ny, nz]) - 1) / 2 * sp
    # Inside test at the voxel corners: (nz+1, ny+1, nx+1)
    kc, jc, ic = np.mgrid[0:nz + 1, 0:ny + 1, 0:nx + 1]
    corner_in = inside((ic - 0.5) * sp[0] - centre[0], (jc - 0.5) * sp[1] - centre[1],
                       (kc - 0.5) * sp[2] - centre[2])
    n_in = sum(corner_in[dz:dz + nz, dy:dy + ny, dx:dx + nx].astype(int)
               for dz in (0, 1) for dy in (0, 1) for dx in (0, 1))
    frac = (n_in == 8).astype(float)
    boundary = binary_dilation((n_in > 0) & (n_in < 8), iterations=1)
    k, j, i = np.nonzero(boundary)
    sub = (np.arange(ss) + 0.5) / ss - 0.5
    oz, oy, ox = np.meshgrid(sub, sub, sub, indexing="ij")
    for start in range(0, len(k), 2048):
        kk, jj, ii = (a[start:start + 2048, None] for a in (k, j, i))
        X = (ii + ox.ravel()) * sp[0] - centre[0]
        Y = (jj + oy.ravel()) * sp[1] - centre[1]
        Z = (kk + oz.ravel()) * sp[2] - centre[2]
        frac[kk[:, 0], jj[:, 0], ii[:, 0]] = inside(X, Y, Z).mean(axis=1)
    return Volume((frac * MU).astype(np.float32), sp, -centre, np.eye(3))


def box_volume(shape_zyx, spacing, half) -> Volume:
    """Exact partial-volume voxelisation of the axis-aligned cube [-half, half]^3."""
    nz, ny, nx = shape_zyx
    sp = np.asarray(spacing, dtype=float)
    centre = (np.array([nx, ny, nz]) - 1) / 2 * sp
    overlaps = []
    for n, h, c in zip((nx, ny, nz), sp, centre):
        mid = np.arange(n) * h - c
        overlaps.append(np.clip(np.minimum(mid + h / 2, half) - np.maximum(mid - h / 2, -half), 0, None) / h)
    frac = overlaps[2][:, None, None] * overlaps[1][None, :, None] * overlaps[0][None, None, :]
    return Volume((frac * MU).astype(np.float32), sp, -centre, np.eye(3))


@pytest.fixture(scope="session")
def headsq_mu() -> Volume:
    p = headsq_path()
    if p is None:
        pytest.skip("../shared/data/headsq is not available")
    v = load_volume(p)
    return v.translated(-v.center).hu_to_attenuation()


@pytest.fixture(scope="session")
def dual_views() -> tuple[ConeView, ConeView]:
    """Two fluoroscopes about 100 degrees apart, sources ~1 m from the intensifiers."""
    views = []
    for ang in (-50.0, 50.0):
        a = np.deg2rad(ang)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        views.append(ConeView.looking_at(src, [0, 0, 0], distance_to_detector=1050.0, pitch=1.2,
                                         width=96, height=96))
    return tuple(views)


@pytest.fixture(scope="session")
def subject():
    """A small real subject: the headsq CT with six extreme bone points (one left/right pair)."""
    from fluororeg.subject.landmarks import Landmarks
    from fluororeg.subject.subject import make_subject

    p = headsq_path()
    if p is None:
        pytest.skip("../shared/data/headsq is not available")
    ct = load_volume(p)
    # Six points on bone: the extreme bone voxels along +-x (left/right pair), +-y and +-z.
    bone = ct.mask(300.0).data.astype(bool)
    k, j, i = np.nonzero(bone)
    P = ct.voxel_to_physical(np.stack([i, j, k], axis=1).astype(float))
    picks = {"left": P[np.argmax(P[:, 0])], "right": P[np.argmin(P[:, 0])], "front": P[np.argmin(P[:, 1])],
             "back": P[np.argmax(P[:, 1])], "top": P[np.argmax(P[:, 2])], "bottom": P[np.argmin(P[:, 2])]}
    lm = Landmarks(tuple(picks), np.array(list(picks.values())))
    return make_subject("headsq", ct, lm, pairs=[("left", "right")])
