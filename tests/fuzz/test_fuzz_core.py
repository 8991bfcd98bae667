"""The core API (Volume, render_parallel, render_cone, project_cone, register_frames,
refine_poses) against random arrays: random shapes and dtypes, NaN, inf, huge values, huge
(zero-stride, never allocated) sizes, bad image sizes and step lengths. Native code runs in the
forked child, so a crash is caught and counted (harness.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import harness
from harness import fuzz_settings

SPECIALS = [np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0, -1.0, 1e-300]
DTYPES = ["float64", "float32", "int16", "uint8", "bool", "int64", "complex64", "object"]


@st.composite
def arrays(draw, shape_hint: tuple, *, allow_huge: bool = True):
    """(recipe): an array near ``shape_hint`` (some dims changed, some dropped or added), of a
    random dtype, with special values at random places; or a huge zero-stride array."""
    shape = list(shape_hint)
    if draw(st.integers(0, 9)) < 6:  # most arguments valid, so the bad one reaches the code behind the checks
        return {"shape": tuple(shape), "dtype": "float64", "specials": [], "scale": 1.0, "how": "valid"}
    how = draw(st.sampled_from(["same", "same", "same", "dims", "ndim", "huge"] if allow_huge else
                               ["same", "same", "dims", "ndim"]))
    if how == "dims" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.sampled_from([0, 1, 2, 3, 7]))
    elif how == "ndim":
        shape = shape[:-1] if shape and draw(st.booleans()) else shape + [draw(st.integers(1, 3))]
    elif how == "huge" and shape:
        i = draw(st.integers(0, len(shape) - 1))
        shape[i] = draw(st.sampled_from([2**20, 2**31 + 1, 2**40]))
    dtype = draw(st.sampled_from(DTYPES[:1] * 6 + DTYPES))
    specials = draw(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(SPECIALS)), max_size=3))
    scale = draw(st.sampled_from([1.0, 1.0, 1e6, 1e-6]))
    return {"shape": tuple(shape), "dtype": dtype, "specials": specials, "scale": scale, "how": how}


def build(recipe, base: np.ndarray):
    """The array a recipe describes, built from a valid ``base`` (in the child)."""
    shape, dtype = recipe["shape"], recipe["dtype"]
    if recipe["how"] == "valid":
        return np.array(base)
    if recipe["how"] == "huge":
        return np.broadcast_to(np.zeros((), dtype if dtype != "object" else "float64"), shape)
    base = np.asarray(base, dtype=np.float64) * recipe["scale"]
    flat = np.resize(base.ravel() if base.size else np.zeros(1), int(np.prod(shape)))
    for at, value in recipe["specials"]:
        if flat.size:
            flat[at % flat.size] = value
    with np.errstate(all="ignore"):
        return flat.reshape(shape).astype(dtype)


def views(size=(24, 24)):
    from fluororeg.core.geometry import ConeView

    out = []
    for ang in (-50.0, 50.0):
        a = np.deg2rad(ang)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        out.append(ConeView.looking_at(src, [0, 0, 0], distance_to_intensifier=1050.0, pitch=8.0, width=size[0],
                                       height=size[1]))
    return out


def volume(data_recipe, spacing_recipe):
    from fluororeg.core.volume import Volume

    z, y, x = np.mgrid[0:6, 0:7, 0:8]
    base = np.where((x - 4) ** 2 + (y - 3) ** 2 + (z - 3) ** 2 < 6, 0.03, 0.0).astype(np.float32)
    data = build(data_recipe, base)
    spacing = build(spacing_recipe, np.array([4.0, 4.0, 4.0]))
    return Volume(data, spacing, np.array([-16.0, -14.0, -12.0]))


POSE = np.array([5.0, -10.0, 20.0, 1.0, 2.0, -3.0])
IMAGE_SIZES = st.sampled_from([(16, 16)] * 6 + [(1, 1), (0, 16), (-4, 16), (70000, 70000), (2**31, 2), (16.5, 16)])


def render_parallel_case(vol_r, sp_r, poses_r, size, pixel_mm):
    from fluororeg.core.geometry import ParallelCamera
    from fluororeg.core.render import render_parallel

    cam = ParallelCamera(size[0], size[1], pixel_mm)
    return render_parallel(volume(vol_r, sp_r), build(poses_r, POSE), cam, num_threads=1)


def render_cone_case(vol_r, sp_r, poses_r, size, step, method):
    from fluororeg.core.render import render_cone

    return render_cone(volume(vol_r, sp_r), views(size)[0], build(poses_r, POSE), step_voxels=step, num_threads=1,
                       method=method)


def project_cone_case(points_r, poses_r, size):
    from fluororeg.core.render import project_cone

    return project_cone(build(points_r, np.arange(12.0).reshape(4, 3)), views(size)[0], build(poses_r, POSE))


def register_case(lm_r, det_r, w_r, pairs, init_r, min_visible):
    from fluororeg.core.registration import register_frames

    lm = np.array([[-4.0, 0, 0], [4.0, 0, 0], [0, -4.0, 0], [0, 4.0, 0], [0, 0, -4.0], [0, 0, 4.0]]) * 5
    det = np.random.default_rng(0).uniform(0, 24, size=(3, 2, 6, 2))
    w = np.ones((3, 2, 6))
    init = None if init_r is None else build(init_r, np.tile(POSE, (3, 1)))
    return register_frames(build(lm_r, lm), views(), build(det_r, det), weights=None if w_r is None else build(w_r, w),
                           pairs=pairs, init_poses=init, min_visible=min_visible, num_threads=1)


def refine_case(vol_r, sp_r, img_r, init_r):
    from fluororeg.core.refine import refine_options, refine_poses

    images = np.random.default_rng(1).random((2, 2, 24, 24))
    return refine_poses(volume(vol_r, sp_r), views(), build(img_r, images), build(init_r, np.tile(POSE, (2, 1))),
                        options=refine_options(max_iterations=3, finest_level=1, num_threads=1),
                        relative_similarity=None)


VOL = arrays((6, 7, 8))
SPACING = arrays((3,), allow_huge=False)
POSES = arrays((2, 6))

CASES = {
    "core render_parallel": (st.tuples(VOL, SPACING, POSES, IMAGE_SIZES,
                                       st.sampled_from([4.0] * 5 + [0.0, -1.0, np.nan, np.inf, 1e-9, 1e300])),
                             render_parallel_case),
    "core render_cone": (st.tuples(VOL, SPACING, POSES, IMAGE_SIZES,
                                   st.sampled_from([1.0] * 5 + [0.0, -1.0, np.nan, np.inf, 1e-12, 1e12]),
                                   st.sampled_from(["march", "shear_warp", "shear_warp", "slices"])),
                         render_cone_case),
    "core project_cone": (st.tuples(arrays((4, 3)), POSES, IMAGE_SIZES), project_cone_case),
    "core register_frames": (st.tuples(arrays((6, 3)), arrays((3, 2, 6, 2)), st.none() | arrays((3, 2, 6)),
                                       st.sampled_from([None, [(0, 1)], [(0, 1)], [(0, 1)], [(0, 6)], [(-1, 2)], [(0, 0)], [(0, 1, 2)],
                                                        [("a", "b")], [(2**40, 1)]]),
                                       st.none() | arrays((3, 6)), st.sampled_from([4, 4, 4, 0, -1, 7, 10**9])),
                             register_case),
    "core refine_poses": (st.tuples(VOL, SPACING, arrays((2, 2, 24, 24)), arrays((2, 6))), refine_case),
}

KNOWN: dict[str, str] = {}  # target -> why it is expected to fail (none known)


def _param(name):
    marks = [pytest.mark.xfail(strict=False, reason=KNOWN[name])] if name in KNOWN else []
    return pytest.param(name, id=name, marks=marks)


@pytest.mark.parametrize("target", [_param(n) for n in CASES])
def test_core_api_valid_result_or_clean_error(target):
    strategy, fn = CASES[target]
    scale = 0.5 if target == "core refine_poses" else 1.0

    @fuzz_settings(scale)
    @given(strategy)
    def one(args):
        harness.fuzz_call(target, fn, *args, describe=f"{fn.__name__}{args!r}", timeout_s=30)

    one()
    harness.assert_no_failures(target)
