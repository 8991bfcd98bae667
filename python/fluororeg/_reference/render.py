"""NumPy references of the renderers and projections (float64, vectorised, slow).

* :func:`line_integral_parallel` / :func:`line_integral_cone`: direct ray marching with a fine
  step through the trilinear interpolant of the volume (``scipy.ndimage.map_coordinates``,
  zero outside the box of voxel centres) -- the quantity a DRR approximates.
* :func:`cone_pixels_pose_gradient` (checks ``ConePixelRequest::pose_gradient``, the intensity
  refinement's Jacobian): central differences of :func:`line_integral_cone` along the pose
  tangent.
* :func:`render_parallel_drr` (checks ``RenderParallelDrr``): the shear-warp factorisation
  written plainly, slice by slice, to check the C++ kernels step for step.
* :func:`render_cone_drr` (checks ``RenderConeDrr``): the C++ cone-beam sampling scheme
  (midpoints of a regular grid over the clipped ray, partial last step) without empty-space
  skipping or support clipping.
* :func:`render_cone_shear_warp` (checks ``RenderConeDrr`` with ``ConeMethod::kShearWarp``): the
  perspective shear-warp factorisation written plainly, slice by slice.
* :func:`project_points_parallel` / :func:`project_points_cone` (check ``ProjectPointsParallel``
  / ``ProjectPointsCone``): landmark projection.
* :func:`cone_pixel_at_object` (checks ``ConePixelAtObject``): the pixel size the 'auto' level
  matches.
* :func:`window_to_uint8` (checks ``WindowToUint8``): 8-bit pictures with ``np.percentile``
  windows, image by image.

Poses are in degrees and millimetres, as in the public API.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

from fluororeg.core.geometry import ConeView, ParallelCamera, pose_from_matrix, pose_matrix
from fluororeg.core.volume import Volume


def _trilinear(data: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    """Trilinear interpolation at voxel coordinates ijk [..., 3] (i, j, k); zero outside the
    box of voxel centres."""
    flat = ijk.reshape(-1, 3)
    vals = map_coordinates(data.astype(np.float64, copy=False), [flat[:, 2], flat[:, 1], flat[:, 0]],
                           order=1, mode="constant", cval=0.0)
    return vals.reshape(ijk.shape[:-1])


def _apply(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ M[:3, :3].T + M[:3, 3]


def _camera_pixels(camera: ParallelCamera, scale: float) -> tuple[np.ndarray, np.ndarray]:
    k = camera.pixel_mm / scale
    xs = (np.arange(camera.width) - (camera.width - 1) / 2) * k
    ys = (np.arange(camera.height) - (camera.height - 1) / 2) * k
    return np.meshgrid(xs, ys)  # [H, W] each, camera mm


def line_integral_parallel(volume: Volume, pose_deg, camera: ParallelCamera, scale: float = 1.0,
                           step_mm: float | None = None) -> np.ndarray:
    """Parallel-beam line integrals [H, W] by fine ray marching along camera +z."""
    data = np.asarray(volume.data, dtype=np.float64)
    h = 0.5 * float(np.min(volume.spacing)) if step_mm is None else float(step_mm)
    camera_from_model = pose_matrix(np.asarray(pose_deg, dtype=np.float64))
    voxel_from_camera = volume.voxel_from_physical @ np.linalg.inv(camera_from_model)
    corners_cam = _apply(camera_from_model, volume.corners)
    z = np.arange(corners_cam[:, 2].min() - h, corners_cam[:, 2].max() + h, h)
    X, Y = _camera_pixels(camera, scale)
    out = np.zeros(X.shape)
    for z0 in range(0, len(z), 64):  # chunks of depth samples
        zz = z[z0:z0 + 64]
        pts = np.stack(np.broadcast_arrays(X[..., None], Y[..., None], zz), axis=-1)
        out += _trilinear(data, _apply(voxel_from_camera, pts)).sum(axis=-1) * h
    return out


def _detector_points(view: ConeView) -> np.ndarray:
    xs, ys = np.meshgrid(np.arange(view.width), np.arange(view.height))
    return view.pixel_to_world(np.stack([xs, ys], axis=-1).astype(np.float64))  # [H, W, 3]


def line_integral_cone(volume: Volume, view: ConeView, pose_deg, step_mm: float | None = None,
                       rows: slice | None = None) -> np.ndarray:
    """Cone-beam line integrals [H, W] (or the given rows) by fine ray marching from the
    source to each pixel's intensifier point."""
    data = np.asarray(volume.data, dtype=np.float64)
    h = 0.5 * float(np.min(volume.spacing)) if step_mm is None else float(step_mm)
    world_from_model = pose_matrix(np.asarray(pose_deg, dtype=np.float64))
    voxel_from_world = volume.voxel_from_physical @ np.linalg.inv(world_from_model)
    P = _detector_points(view)
    if rows is not None:
        P = P[rows]
    S = view.source
    corners_w = _apply(world_from_model, volume.corners)
    # Depth range along each ray: project the volume's corners on the ray direction.
    d = P - S
    length = np.linalg.norm(d, axis=-1)
    unit = d / length[..., None]
    depth = (corners_w - S) @ unit.reshape(-1, 3).T  # [8, rays]
    s0 = max(float(depth.min()) - h, 0.0)
    s1 = float(depth.max()) + h
    s = np.arange(s0, s1, h)
    out = np.zeros(P.shape[:-1])
    for c0 in range(0, len(s), 32):
        ss = s[c0:c0 + 32]
        pts = S + unit[..., None, :] * ss[:, None]
        out += _trilinear(data, _apply(voxel_from_world, pts)).sum(axis=-1) * h
    return out


def cone_pixels_pose_gradient(volume: Volume, view: ConeView, pixels, pose_deg, step_rad: float = 1e-3,
                              step_mm: float = 0.01, march_mm: float = 0.05) -> np.ndarray:
    """Derivatives [6, m] of the line integrals at pixels [m] (indices y * W + x) along the pose
    tangent (w_x, w_y, w_z rad: a rotation about the model origin in world axes; dt mm: then a
    translation; world_from_model (R, tau) -> (exp(w) R, tau + dt)), by central differences of
    :func:`line_integral_cone` with steps ``step_rad`` / ``step_mm`` (float64 sums over a sample
    grid fixed in the world: small steps stay exact), marching ``march_mm`` (the interpolant's
    gradient jumps at cell faces: a few samples per cell would not integrate it)."""
    from scipy.spatial.transform import Rotation

    pixels = np.asarray(pixels, dtype=np.int64)
    M = pose_matrix(np.asarray(pose_deg, dtype=np.float64))
    out = np.zeros((6, len(pixels)))
    for j in range(6):
        values = []
        for sign in (1.0, -1.0):
            moved = M.copy()
            if j < 3:
                w = np.zeros(3)
                w[j] = sign * step_rad
                moved[:3, :3] = Rotation.from_rotvec(w).as_matrix() @ M[:3, :3]
            else:
                moved[j - 3, 3] += sign * step_mm
            values.append(line_integral_cone(volume, view, pose_from_matrix(moved), march_mm).ravel()[pixels])
        out[j] = (values[0] - values[1]) / (2 * (step_rad if j < 3 else step_mm))
    return out


def _padded_bilinear(padded: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Bilinear samples of one slice padded by a zero voxel on every side ([n_b + 2, n_a + 2]) at
    unpadded in-slice coordinates (pa, pb) [...]; zero where they leave the padded slice."""
    n_b, n_a = padded.shape[0] - 2, padded.shape[1] - 2
    ia, ib = np.floor(pa).astype(int), np.floor(pb).astype(int)
    fa, fb = pa - ia, pb - ib
    ok = (ia >= -1) & (ia <= n_a - 1) & (ib >= -1) & (ib <= n_b - 1)
    ia1, ib1 = np.where(ok, ia + 1, 0), np.where(ok, ib + 1, 0)
    v = ((1 - fb) * ((1 - fa) * padded[ib1, ia1] + fa * padded[ib1, ia1 + 1])
         + fb * ((1 - fa) * padded[ib1 + 1, ia1] + fa * padded[ib1 + 1, ia1 + 1]))
    return np.where(ok, v, 0.0)


def render_parallel_drr(volume: Volume, pose_deg, camera: ParallelCamera, scale: float = 1.0) -> np.ndarray:
    """Shear-warp DRR [H, W], the algorithm written plainly (see render_kernels.h)."""
    data = np.asarray(volume.data, dtype=np.float64)
    A = volume.voxel_from_physical @ np.linalg.inv(pose_matrix(np.asarray(pose_deg, dtype=np.float64)))
    k = camera.pixel_mm / scale
    cx, cy = (camera.width - 1) / 2, (camera.height - 1) / 2
    gx, gy = A[:3, 0] * k, A[:3, 1] * k
    h0 = A[:3, 3] - gx * cx - gy * cy
    dv = A[:3, 2]
    c = int(np.argmax(np.abs(dv)))
    a, b = {0: (1, 2), 1: (0, 2), 2: (0, 1)}[c]
    # Slices along c as [n_c, n_b, n_a] arrays (axes of data are k, j, i).
    axis_of = {0: 2, 1: 1, 2: 0}
    slices = np.transpose(data, (axis_of[c], axis_of[b], axis_of[a]))
    n_c, n_b, n_a = slices.shape
    sa, sb = dv[a] / dv[c], dv[b] / dv[c]
    weight = 1.0 / abs(dv[c])
    xs, ys = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    Ia = (gx[a] - sa * gx[c]) * xs + (gy[a] - sa * gy[c]) * ys + (h0[a] - sa * h0[c])
    Ib = (gx[b] - sb * gx[c]) * xs + (gy[b] - sb * gy[c]) * ys + (h0[b] - sb * h0[c])
    # Intermediate image on the integer base-plane grid covering the image.
    a0, b0 = int(np.floor(Ia.min())) - 1, int(np.floor(Ib.min())) - 1
    wa, wb = int(np.floor(Ia.max())) - a0 + 3, int(np.floor(Ib.max())) - b0 + 3
    P, Q = np.meshgrid(np.arange(wa) + a0, np.arange(wb) + b0)
    padded = np.pad(slices, ((0, 0), (1, 1), (1, 1)))
    inter = np.zeros((wb, wa))
    for kk in range(n_c):
        inter += _padded_bilinear(padded[kk], P + kk * sa, Q + kk * sb)  # in-slice coordinates
    inter *= weight
    # Warp: bilinear sample of the intermediate image at (Ia, Ib), zero outside.
    return map_coordinates(inter, [Ib - b0, Ia - a0], order=1, mode="constant", cval=0.0)


def render_cone_drr(volume: Volume, view: ConeView, pose_deg, step_voxels: float = 1.0) -> np.ndarray:
    """Cone-beam DRR [H, W] with exactly the C++ sampling scheme (no empty-space skipping)."""
    data = np.asarray(volume.data, dtype=np.float64)
    nx, ny, nz = volume.shape_xyz
    voxel_from_world = volume.voxel_from_physical @ np.linalg.inv(pose_matrix(np.asarray(pose_deg, dtype=np.float64)))
    S = _apply(voxel_from_world, view.source)
    P = _apply(voxel_from_world, _detector_points(view)).reshape(-1, 3)
    d = P - S
    hi = np.array([nx - 1, ny - 1, nz - 1], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ta = (0.0 - S) / d
        tb = (hi - S) / d
    t_lo = np.where(np.abs(d) < 1e-12, -np.inf, np.minimum(ta, tb))
    t_hi = np.where(np.abs(d) < 1e-12, np.inf, np.maximum(ta, tb))
    inside_parallel = np.all((np.abs(d) >= 1e-12) | ((S >= 0) & (S <= hi)), axis=1)
    t0 = np.maximum(t_lo.max(axis=1), 0.0)
    t1 = np.minimum(t_hi.min(axis=1), 1.0)
    hit = inside_parallel & (t1 > t0)
    len_vox = np.linalg.norm(d, axis=1)
    len_mm = np.linalg.norm(d * volume.spacing, axis=1)
    dt = step_voxels / len_vox
    out = np.zeros(len(P))
    for r in np.nonzero(hit)[0]:
        n_steps = int(np.ceil((t1[r] - t0[r]) / dt[r]))
        ta_ = t0[r] + np.arange(n_steps) * dt[r]
        tb_ = np.minimum(ta_ + dt[r], t1[r])
        t = 0.5 * (ta_ + tb_)
        vals = _trilinear(data, S + t[:, None] * d[r])
        out[r] = np.sum(vals * (tb_ - ta_)) * len_mm[r]
    return out.reshape(view.height, view.width)


def render_cone_shear_warp(volume: Volume, view: ConeView, pose_deg) -> np.ndarray | None:
    """Cone-beam DRR [H, W] by perspective shear-warp (see render_kernels.h), or None where it
    does not apply (the source within the padded slab of slices, or the intensifier plane not
    beyond the padded volume box)."""
    data = np.asarray(volume.data, dtype=np.float64)
    M = volume.voxel_from_physical @ np.linalg.inv(pose_matrix(np.asarray(pose_deg, dtype=np.float64)))
    S = _apply(M, view.source)
    P = _apply(M, _detector_points(view))  # [H, W, 3] voxel coordinates
    H, W = P.shape[:2]
    c = int(np.argmax(np.abs(P[(H - 1) // 2, (W - 1) // 2] - S)))
    a, b = {0: (1, 2), 1: (0, 2), 2: (0, 1)}[c]
    axis_of = {0: 2, 1: 1, 2: 0}
    slices = np.transpose(data, (axis_of[c], axis_of[b], axis_of[a]))
    n_c, n_b, n_a = slices.shape

    def pixel(x, y):
        return _apply(M, view.pixel_to_world(np.array([x, y], float)))

    corners = np.array([pixel(x, y) for x in (-1.0, W) for y in (-1.0, H)])
    cm, half = (n_c - 1) / 2, (n_c + 1) / 2  # the middle slice; the padded slab's half depth
    side = np.sign(cm - S[c])
    P00 = pixel(0.0, 0.0)
    normal = np.cross(pixel(1.0, 0.0) - P00, pixel(0.0, 1.0) - P00)
    box = np.array([[x, y, z] for x in (-1.0, data.shape[2]) for y in (-1.0, data.shape[1])
                    for z in (-1.0, data.shape[0])])
    source_side = normal @ (S - P00)
    if not (side * (cm - S[c]) >= half and source_side != 0 and np.all((box - P00) @ normal * source_side > 0)):
        return None

    def foot(points):  # [..., 3] -> where their rays from S cross the plane c = cm, [..., 2] (a, b)
        t = (cm - S[c]) / (points[..., c] - S[c])
        return S[[a, b]] + t[..., None] * (points[..., [a, b]] - S[[a, b]])

    h = (np.arange(n_c) - S[c]) / (cm - S[c])  # [n_c] slice scale about the source
    # Intermediate grid at the image's pixel pitch on the plane c = cm (the shorter pixel step at
    # the centre, mm), over the image's footprint cut to the slices', one pixel spare each side.
    sp_ab = volume.spacing[[a, b]]
    cx, cy = (W - 1) / 2, (H - 1) / 2
    f0, fx, fy = foot(pixel(cx, cy)), foot(pixel(cx + 1, cy)), foot(pixel(cx, cy + 1))
    pitch_mm = min(np.linalg.norm((fx - f0) * sp_ab), np.linalg.norm((fy - f0) * sp_ab))
    pitch = pitch_mm / sp_ab  # [2] voxels along a, b
    fc = foot(corners) if np.all(side * (corners[:, c] - S[c]) > 0) else np.array([[-np.inf] * 2, [np.inf] * 2])
    grid = []
    for col, (axis, n_in) in enumerate(((a, n_a), (b, n_b))):
        ends = [S[axis] + (e - S[axis]) / h[k] for e in (-1.0, float(n_in)) for k in (0, n_c - 1)]
        lo, hi = max(fc[:, col].min(), min(ends)), min(fc[:, col].max(), max(ends))
        if not hi >= lo:
            return np.zeros((H, W), np.float64)
        origin = lo - pitch[col]
        grid.append((origin, int(np.floor((hi - origin) / pitch[col])) + 2))
    (a0, wa), (b0, wb) = grid
    Pg, Qg = np.meshgrid(a0 + np.arange(wa) * pitch[0], b0 + np.arange(wb) * pitch[1])
    padded = np.pad(slices, ((0, 0), (1, 1), (1, 1)))
    inter = np.zeros((wb, wa))
    for k in range(n_c):
        inter += _padded_bilinear(padded[k], S[a] + (Pg - S[a]) * h[k], S[b] + (Qg - S[b]) * h[k])
    # Warp: each pixel's ray meets the plane c = cm at (Ia, Ib); times its mm per slice.
    d = P - S
    with np.errstate(divide="ignore", invalid="ignore"):
        fp = foot(P)
        Ia, Ib = (fp[..., 0] - a0) / pitch[0], (fp[..., 1] - b0) / pitch[1]
        weight = np.linalg.norm(d * volume.spacing, axis=-1) / np.abs(d[..., c])
    away = ~(side * d[..., c] > 0)  # rays that turn away from the slices
    Ia, Ib = np.where(away, -1e9, Ia), np.where(away, -1e9, Ib)
    return np.where(away, 0.0, map_coordinates(inter, [Ib, Ia], order=1, mode="constant", cval=0.0) * weight)

def project_points_parallel(points, pose_deg, camera: ParallelCamera, scale: float = 1.0):
    """(xy [m, 2], in_fov [m]) of model points under a parallel-beam pose."""
    Xc = _apply(pose_matrix(np.asarray(pose_deg, dtype=np.float64)), np.asarray(points, dtype=np.float64))
    x = scale * Xc[:, 0] / camera.pixel_mm + (camera.width - 1) / 2
    y = scale * Xc[:, 1] / camera.pixel_mm + (camera.height - 1) / 2
    inside = (x >= -0.5) & (x < camera.width - 0.5) & (y >= -0.5) & (y < camera.height - 0.5)
    return np.stack([x, y], axis=-1), inside


def project_points_cone(points, view: ConeView, pose_deg):
    """(xy [m, 2], in_fov [m]) of model points through a cone view (NaN behind the source)."""
    Xw = _apply(pose_matrix(np.asarray(pose_deg, dtype=np.float64)), np.asarray(points, dtype=np.float64))
    n = view.normal
    d = Xw - view.source
    sd = n @ (view.intensifier_centre - view.source)
    nd = d @ n
    front = nd * sd > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        P = view.source + (sd / nd)[:, None] * d
    rel = P - view.intensifier_centre
    x = rel @ view.u / view.pitch_u + (view.width - 1) / 2
    y = rel @ view.v / view.pitch_v + (view.height - 1) / 2
    xy = np.where(front[:, None], np.stack([x, y], axis=-1), np.nan)
    inside = front & (x >= -0.5) & (x < view.width - 0.5) & (y >= -0.5) & (y < view.height - 0.5)
    return xy, inside


def window_to_uint8(drr, percentile: float = 99.5, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """Per image [H, W] of ``drr`` [n, H, W]: pixels where ``keep`` is False set to 0, the window
    (0, p) with p = ``np.percentile`` of the positive values (1 when none), then
    round(255 * clip(v / p, 0, 1)) in float32. Returns (uint8 [n, H, W], p [n] float32)."""
    drr = np.asarray(drr, dtype=np.float32)
    images = np.empty(drr.shape, np.uint8)
    hi = np.empty(len(drr), np.float32)
    for i, img in enumerate(drr):
        if keep is not None:
            img = np.where(keep[i], img, np.float32(0))
        positive = img[img > 0]
        hi[i] = np.percentile(positive, percentile) if positive.size else 1.0
        v = np.clip(img / hi[i], np.float32(0), np.float32(1))
        images[i] = np.round(v * np.float32(255)).astype(np.uint8)
    return images, hi


def cone_pixel_at_object(views, poses_deg) -> float:
    """Smallest pixel pitch of ``views`` [n] (ConeView) at the model origins of ``poses_deg``
    [n, 6]: pitch * |n . (T - S)| / |n . (D - S)| with n = u x v (depth at least 1e-6 mm)."""
    out = []
    for view, pose in zip(views, np.asarray(poses_deg, float)):
        n = np.cross(view.u, view.v)
        sdd = abs(n @ (view.intensifier_centre - view.source))
        sod = max(abs(n @ (pose[3:6] - view.source)), 1e-6)
        out.append(min(view.pitch_u, view.pitch_v) * sod / sdd)
    return float(min(out))
