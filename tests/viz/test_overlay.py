"""Overlays a person can check: the bone's projected contour lies on the edge of the projected
bone mask (and moves with the pose), detections, residual vectors, frame number and status
are drawn; plots are matplotlib PNGs with one quantity per panel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fluororeg.core import render as R
from fluororeg.core.geometry import ConeView
from fluororeg.viz.overlay import _to_rgb, bone_contours, overlay_frame, overlay_pair
from fluororeg.viz.plots import bar_chart, plot_curves


@pytest.fixture(scope="module")
def view():
    return ConeView.looking_at([0, -650, 0], [0, 0, 0], distance_to_intensifier=1050.0, pitch=2.2, width=200,
                               height=180)


def _grey(view):
    """A low-contrast ramp (the overlay stretches it to 0..255 grey)."""
    return np.tile(np.linspace(80, 120, view.width), (view.height, 1)).astype(np.float32)


def _changed(img_rgb, grey):
    return np.any(img_rgb.astype(int) != _to_rgb(grey).astype(int), axis=2)


def test_contour_is_drawn_where_the_bone_projects(subject, view):
    pose = np.array([5.0, -10.0, 20.0, 3.0, 0.0, -4.0])
    sil = R.project_mask_cone(subject.mask_model(), view, pose)[0]
    assert 500 < sil.sum() < sil.size - 500
    edge = sil & ~ndimage.binary_erosion(sil)
    grey = _grey(view)
    out = overlay_frame(grey, subject, view, pose)
    assert out.shape == (view.height, view.width, 3) and out.dtype == np.uint8
    yellow = (out[..., 0] > 130) & (out[..., 1] > 120) & (out[..., 2] < 90)
    # every yellow pixel is within 2 px of the silhouette's edge, and the edge is covered
    dist_to_edge = ndimage.distance_transform_edt(~edge)
    assert yellow.sum() > 0.5 * edge.sum()
    assert np.percentile(dist_to_edge[yellow], 99) <= 2.0
    dist_to_line = ndimage.distance_transform_edt(~yellow)
    assert np.mean(dist_to_line[edge] <= 3.0) > 0.85  # (the contour comes from a half-size rendering)
    # anti-aliased: partial intensities along the line, not only full colour
    drawn = _changed(out, grey)
    assert len(np.unique(out[drawn][:, 1])) > 10
    # the contour polylines themselves follow the edge with sub-pixel steps
    pts = np.concatenate(bone_contours(subject, view, pose, scale=1.0))
    ij = np.round(pts[:, ::-1]).astype(int)
    inb = (ij[:, 0] >= 0) & (ij[:, 0] < view.height) & (ij[:, 1] >= 0) & (ij[:, 1] < view.width)
    assert np.percentile(dist_to_edge[ij[inb, 0], ij[inb, 1]], 95) <= 1.0
    # another pose: the contour moves with the bone
    moved = overlay_frame(grey, subject, view, pose + np.array([0, 0, 0, 30.0, 0, 0]))
    yellow2 = (moved[..., 0] > 130) & (moved[..., 1] > 120) & (moved[..., 2] < 90)
    assert np.percentile(dist_to_edge[yellow2], 50) > 5.0


def test_detections_residuals_frame_and_status(subject, view):
    pose = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    xy, inside = R.project_cone(subject.landmarks_model, view, pose)
    det = xy[0] + np.array([6.0, -4.0])
    det[1] = np.nan
    grey = _grey(view)
    out = overlay_frame(grey, subject, view, pose, detected=det, outline=False, frame=99, status="ok")
    magenta = (out[..., 0] > 150) & (out[..., 2] > 150) & (out[..., 1] < 120)
    red = (out[..., 0] > 150) & (out[..., 1] < 110) & (out[..., 2] < 110)
    assert magenta.sum() > 5 and red.sum() > 5
    # the residual of landmark 0 runs between its detection and its projection
    k = int(np.nonzero(inside[0] & (np.arange(len(det)) != 1))[0][0])
    a, b = det[k], xy[0, k]
    mid = np.round((a + b) / 2).astype(int)
    assert magenta[mid[1] - 1:mid[1] + 2, mid[0] - 1:mid[0] + 2].any()
    # header text drawn at the top left; none without label, frame or status
    assert _changed(out, grey)[:30, :60].sum() > 30
    plain = overlay_frame(grey, subject, view, pose, outline=False)
    assert not _changed(plain, grey)[:30, :60].any()
    nopose = overlay_frame(grey, subject, view, np.full(6, np.nan), frame=3)
    assert _changed(nopose, grey)[:40, :80].sum() > 30  # "frame 3" and "no pose"
    pair = overlay_pair([grey, grey], subject, (view, view), pose, frame=158, status="views_disagree")
    assert pair.shape == (view.height, 2 * view.width + 8, 3)


def test_plots_are_matplotlib_pngs(tmp_path):
    from PIL import Image

    rows = [{"frame": i, "angle error (deg)": 1 + i % 3, "position error (mm)": 0.5 * i} for i in range(20)]
    p = plot_curves(rows, "frame", ["angle error (deg)", "position error (mm)"], tmp_path / "e.png", log_y=False,
                    title="errors")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.width == 720 and im.height >= 420
    q = bar_chart(["walk", "flexion"], {"angle (deg)": [(3.9, 2.1), (8.9, float("nan"))],
                                        "position (mm)": [(4.6, 2.2), (float("nan"), 1.0)]}, tmp_path / "b.png",
                  y_label="deg / mm")
    with Image.open(q) as im:
        assert im.format == "PNG"
    empty = plot_curves([], "step", ["loss"], tmp_path / "none.png")
    assert empty.is_file()
    with pytest.raises(ValueError, match="2 groups"):
        bar_chart(["a", "b"], {"x": [(1, 1)]}, tmp_path / "bad.png")
