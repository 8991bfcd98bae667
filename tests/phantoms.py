"""Small analytic phantoms shared by the render, refinement and plastimatch tests."""

from __future__ import annotations

import numpy as np

from fluororeg.core.volume import Volume

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
