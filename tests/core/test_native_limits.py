"""No input from Python crashes the compiled core: huge, overflowing, negative, NaN and
mis-shaped arguments to every binding entry point give a ValueError naming the value (the
limits: cpp/include/fluororeg/limits.h). The probes run in subprocesses (a few, each batching
many probes) so that a crash fails these tests instead of killing pytest."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fluororeg import _core
from fluororeg.core import render as R
from fluororeg.core.geometry import ConeView, ParallelCamera
from fluororeg.core.volume import Volume

# Shared by the probe scripts: a tiny volume, two 8 x 8 px cone views and their packed rows.
SETUP = """
import json, sys
import numpy as np
from fluororeg import _core

vol = np.zeros((4, 4, 4), np.float32)
vol[1:3, 1:3, 1:3] = 0.01
m = np.eye(3, 4)
poses = np.zeros((2, 6))
nan_poses = poses.copy()
nan_poses[1, 4] = np.nan
scales = np.ones(2)

def view_row(w=8, h=8):
    v = np.zeros(16)
    v[:3] = [0, 0, -1000]
    v[3:6] = [0, 0, 300]
    v[6:9] = [1, 0, 0]
    v[9:12] = [0, 1, 0]
    v[12:14] = 1.0
    v[14:16] = [w, h]
    return v

views = np.stack([view_row(), view_row()])
# Dual-fluoroscope views 90 degrees apart (registration rejects parallel ones).
side = view_row()
side[:3], side[3:6], side[6:9], side[9:12] = [-1000, 0, 0], [300, 0, 0], [0, 1, 0], [0, 0, 1]
reg_views = np.stack([view_row(), side])
huge_views = np.stack([view_row(1 << 30, 1 << 30)] * 2)
nan_views = views.copy()
nan_views[0, 1] = np.nan
big_views16 = np.stack([view_row(16384, 16384)] * 16)
pts = np.zeros((3, 3))
rv = _core.RenderVolume(vol, m, "cpu")
refine_volumes = _core.RefineVolumes(vol, m, None, None, 4)
"""

# A probe runs `expr` in the subprocess and records the exception's type and message.
RUNNER = """
results = {}
for name, expr in PROBES:
    try:
        eval(expr)
        results[name] = ["none", ""]
    except Exception as exc:
        results[name] = [type(exc).__name__, str(exc)]
print(json.dumps(results))
"""

# (entry point / case, expression, a part of the expected ValueError message)
PROBES = {
    "render": [
        ("render_parallel: size overflowing size_t",
         "_core.render_parallel(vol, m, 1.0, 1 << 30, 1 << 30, np.zeros((16, 6)), np.ones(16))",
         "1073741824 x 1073741824: expected 1 to 16384"),
        ("render_parallel: output beyond 8 GiB",
         "_core.render_parallel(vol, m, 1.0, 16384, 16384, np.zeros((16, 6)), np.ones(16))",
         "images of shape (16, 16384, 16384) would take 17179869184 bytes"),
        ("render_parallel: negative width",
         "_core.render_parallel(vol, m, 1.0, -8, 8, poses, scales)", "-8 x 8"),
        ("render_parallel: NaN pixel size",
         "_core.render_parallel(vol, m, float('nan'), 8, 8, poses, scales)", "pixel size nan"),
        ("render_parallel: NaN pose", "_core.render_parallel(vol, m, 1.0, 8, 8, nan_poses, scales)",
         "pose 1 holds a non-finite value"),
        ("render_parallel: NaN scale",
         "_core.render_parallel(vol, m, 1.0, 8, 8, poses, np.array([1.0, np.nan]))", "scale 1"),
        ("render_parallel: too many threads",
         "_core.render_parallel(vol, m, 1.0, 8, 8, poses, scales, 'cpu', 1 << 30)",
         "num_threads = 1073741824: expected 0 to 1024"),
        ("render_parallel: NaN model_from_voxel",
         "_core.render_parallel(vol, np.full((3, 4), np.nan), 1.0, 8, 8, poses, scales)",
         "model_from_voxel holds a non-finite value"),
        ("render_parallel: volume wrong ndim",
         "_core.render_parallel(np.zeros((4, 4), np.float32), m, 1.0, 8, 8, poses, scales)",
         "volume has shape (4, 4)"),
        ("render_parallel_prepared: size overflowing size_t",
         "_core.render_parallel_prepared(rv, 1.0, 1 << 30, 1 << 30, np.zeros((16, 6)), np.ones(16))",
         "1073741824 x 1073741824"),
        ("render_parallel_prepared: negative threads",
         "_core.render_parallel_prepared(rv, 1.0, 8, 8, poses, scales, 'cpu', -3)", "num_threads = -3"),
        ("render_cone: view size overflowing size_t",
         "_core.render_cone(vol, m, huge_views, poses)", "image width = 1073741824"),
        ("render_cone: output beyond 8 GiB",
         "_core.render_cone(vol, m, big_views16, np.zeros((16, 6)))",
         "images of shape (16, 16384, 16384) would take"),
        ("render_cone: NaN view", "_core.render_cone(vol, m, nan_views, poses)", "non-finite value"),
        ("render_cone: NaN step", "_core.render_cone(vol, m, views, poses, float('nan'))",
         "step_voxels = nan"),
        ("render_cone: views for poses", "_core.render_cone(vol, m, views, np.zeros((3, 6)))",
         "got 2 views for 3 poses"),
        ("render_cone_prepared: view size overflowing size_t",
         "_core.render_cone_prepared(rv, huge_views, poses)", "image width = 1073741824"),
        ("render_cone_prepared: on_device on cpu",
         "_core.render_cone_prepared(rv, views, poses, 1.0, 'cpu', 0, True)", "on_device=True"),
        ("RenderVolume: too thin", "_core.RenderVolume(np.zeros((1, 4, 4), np.float32), m)",
         "too small"),
        ("RenderVolume: side beyond the limit",
         "_core.RenderVolume(np.zeros((2, 2, 16385), np.float32), m)",
         "16385 voxels along axis 2: expected at most 16384"),
        ("RenderVolume: unknown device", "_core.RenderVolume(vol, m, 'tpu')", "device 'tpu' is unknown"),
        ("project_parallel: negative size",
         "_core.project_parallel(1.0, -1, 8, poses, scales, pts)", "-1 x 8"),
        ("project_parallel: NaN point",
         "_core.project_parallel(1.0, 8, 8, poses, scales, np.full((2, 3), np.nan))",
         "point 0 holds a non-finite value"),
        ("project_cone: too many points",
         "_core.project_cone(views[:0], poses[:0], np.zeros((_core.MAX_POINTS + 1, 3)))",
         "got 1048577 points: expected at most 1048576"),
        ("project_cone: view size overflowing size_t",
         "_core.project_cone(huge_views, poses, pts)", "image width = 1073741824"),
    ],
    "registration": [
        ("register_batch: NaN landmark",
         "_core.register_batch(np.full((3, 3), np.nan), reg_views, np.zeros((0, 2), np.int32), "
         "np.zeros((1, 2, 3, 2)), None, None, _core.RegistrationOptions())", "landmark 0 holds a non-finite"),
        ("register_batch: detections of another landmark count",
         "_core.register_batch(pts, reg_views, np.zeros((0, 2), np.int32), np.zeros((1, 2, 4, 2)), None, "
         "None, _core.RegistrationOptions())", "detections has shape (1, 2, 4, 2)"),
        ("register_batch: pair out of range",
         "_core.register_batch(pts, reg_views, np.array([[0, 7]], np.int32), np.zeros((1, 2, 3, 2)), None, "
         "None, _core.RegistrationOptions())", "index 7 out of range"),
        ("register_batch: too many threads",
         "_core.register_batch(pts, reg_views, np.zeros((0, 2), np.int32), np.zeros((1, 2, 3, 2)), None, "
         "None, _core.RegistrationOptions(num_threads=1 << 30))", "num_threads = 1073741824"),
        ("register_batch: too many landmarks",
         "_core.register_batch(np.zeros((_core.MAX_POINTS + 1, 3)), reg_views, np.zeros((0, 2), np.int32), "
         "np.zeros((0, 2, _core.MAX_POINTS + 1, 2)), None, None, _core.RegistrationOptions())",
         "got 1048577 landmarks"),
        ("register_batch: views of huge size",
         "_core.register_batch(pts, huge_views, np.zeros((0, 2), np.int32), np.zeros((1, 2, 3, 2)), "
         "None, None, _core.RegistrationOptions())", "image width = 1073741824"),
        ("check_view_agreement: batch lacking results",
         "_core.check_view_agreement(pts, reg_views, np.zeros((0, 2), np.int32), np.zeros((1, 2, 3, 2)), "
         "None, {}, _core.RegistrationOptions())", "batch lacks"),
        ("registration_status_name: negative", "_core.registration_status_name(-1)",
         "status code -1 is unknown"),
        ("validate_pairs: negative landmark count",
         "_core.validate_pairs(np.zeros((1, 2), np.int32), -5)", "num_landmarks = -5"),
        ("validate_pairs: fewer names than landmarks",
         "_core.validate_pairs(np.array([[0, 1]], np.int32), 5, ['a'])", "got 1 names for 5 landmarks"),
        ("pose_errors: mismatched counts", "_core.pose_errors(np.zeros((2, 6)), np.zeros((3, 6)))",
         "pose_b has shape (3, 6)"),
        ("mean_landmark_distance: landmarks [m, 2]",
         "_core.mean_landmark_distance(np.zeros((3, 2)), poses, poses)", "landmarks has shape (3, 2)"),
    ],
    "refine_calibration": [
        ("refine_frames: too many threads",
         "_core.refine_frames(refine_volumes, views, np.zeros((1, 2, 8, 8), np.float32), None, "
         "np.zeros((1, 6)), (lambda o: (setattr(o, 'num_threads', 1 << 30), o)[1])(_core.RefineOptions()))",
         "num_threads = 1073741824"),
        ("refine_frames: views of huge size",
         "_core.refine_frames(refine_volumes, huge_views, np.zeros((1, 2, 8, 8), np.float32), None, "
         "np.zeros((1, 6)), _core.RefineOptions())", "image width = 1073741824"),
        ("refine_frames: images of another size",
         "_core.refine_frames(refine_volumes, views, np.zeros((1, 2, 9, 8), np.float32), None, "
         "np.zeros((1, 6)), _core.RefineOptions())", "images has shape (1, 2, 9, 8)"),
        ("RefineVolumes: no level", "_core.RefineVolumes(vol, m, None, None, 0)", "num_levels = 0"),
        ("RefineVolumes: a bone without its matrix", "_core.RefineVolumes(vol, m, vol, None, 2)",
         "bone and bone_model_from_voxel go together"),
        ("refine_frames: fewer prepared levels than the options'",
         "_core.refine_frames(_core.RefineVolumes(vol, m, None, None, 2), views, np.zeros((1, 2, 8, 8), "
         "np.float32), None, np.zeros((1, 6)), _core.RefineOptions())", "have 2 pyramid levels: this call needs 4"),
        ("evaluate_refine_similarity: huge level",
         "_core.evaluate_refine_similarity(refine_volumes, views, np.zeros((1, 2, 8, 8), np.float32), "
         "None, np.zeros((1, 6)), 1 << 20, _core.RefineOptions())", "level 1048576"),
        ("gradient_correlation: side beyond the limit",
         "_core.gradient_correlation(np.zeros((2, 16385), np.float32), np.zeros((2, 16385), np.float32))",
         "image width = 16385"),
        ("normalized_cross_correlation: mismatched images",
         "_core.normalized_cross_correlation(np.zeros((4, 4), np.float32), np.zeros((4, 5), np.float32))",
         "b has shape (4, 5)"),
        ("pyramid_view: huge level", "_core.pyramid_view(views[0], 1 << 20)", "level 1048576"),
        ("pyramid_view: NaN view", "_core.pyramid_view(nan_views[0], 1)", "non-finite value"),
        ("refine_cone_view: NaN huber",
         "_core.refine_cone_view(views[0], np.eye(3) * 10, np.zeros((3, 2)), huber_px=float('nan'))",
         "huber_px = nan"),
        ("refine_cone_view: negative iterations",
         "_core.refine_cone_view(views[0], np.eye(3) * 10, np.zeros((3, 2)), max_iterations=-1)",
         "max_iterations = -1"),
        ("refine_cone_view: NaN bead",
         "_core.refine_cone_view(views[0], np.full((3, 3), np.nan), np.zeros((3, 2)))", "non-finite"),
        ("refine_cone_view: view of huge size",
         "_core.refine_cone_view(huge_views[0], np.eye(3) * 10, np.zeros((3, 2)))", "image width = 1073741824"),
        ("reprojection_residuals: pixels of another count",
         "_core.reprojection_residuals(views[0], np.eye(3), np.zeros((4, 2)))", "pixels has shape (4, 2)"),
    ],
}


@pytest.fixture(scope="module")
def probe_results() -> dict[str, dict[str, list[str]]]:
    """Each group's probes run in one subprocess; a crash there (a signal, no JSON) fails every
    probe of the group with the subprocess's output."""
    out = {}
    for group, probes in PROBES.items():
        script = SETUP + f"\nPROBES = {[(n, e) for n, e, _ in probes]!r}\n" + textwrap.dedent(RUNNER)
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            out[group] = {"__crash__": [str(run.returncode), run.stderr[-2000:]]}
        else:
            out[group] = json.loads(run.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("group,name,expected",
                         [(g, n, x) for g, probes in PROBES.items() for n, _, x in probes],
                         ids=[n for probes in PROBES.values() for n, _, _ in probes])
def test_bad_argument_gives_value_error(probe_results, group, name, expected):
    results = probe_results[group]
    assert "__crash__" not in results, f"the probe process ended with {results['__crash__']}"
    kind, message = results[name]
    assert kind == "ValueError", f"{name}: got {kind}: {message}"
    assert expected in message, f"{name}: {message!r} lacks {expected!r}"


def test_core_exports_its_limits():
    assert _core.MAX_IMAGE_SIDE == 16384
    assert _core.MAX_OUTPUT_BYTES == 8 << 30
    assert _core.MAX_BATCH == 1 << 24 and _core.MAX_POINTS == 1 << 20
    assert _core.MAX_VOLUME_SIDE == 16384 and _core.MAX_VOLUME_VOXELS == 1 << 30
    assert _core.MAX_THREADS == 1024


def test_the_largest_image_side_renders():
    """The limit is inclusive: one 1 x MAX_IMAGE_SIDE DRR renders like the reference sizes."""
    vol = np.zeros((4, 4, 4), np.float32)
    vol[1:3, 1:3, 1:3] = 0.01
    drr = _core.render_parallel(vol, np.eye(3, 4), 0.001, _core.MAX_IMAGE_SIDE, 1, np.zeros((1, 6)), np.ones(1))
    assert drr.shape == (1, 1, _core.MAX_IMAGE_SIDE)
    assert np.all(np.isfinite(drr))


def _tiny_volume() -> Volume:
    data = np.zeros((4, 4, 4), np.float32)
    data[1:3, 1:3, 1:3] = 0.01
    return Volume(data, np.ones(3), np.zeros(3))


def test_python_wrappers_name_the_argument():
    vol = _tiny_volume()
    with pytest.raises(ValueError, match=r"camera.width = 1073741824: expected 1 to 16384"):
        R.render_parallel(vol, np.zeros((16, 6)), ParallelCamera(1 << 30, 1 << 30, 1.0))
    with pytest.raises(ValueError, match=r"poses = 16 images of 16384 x 16384 px would take 16.0 GiB"):
        R.render_parallel(vol, np.zeros((16, 6)), ParallelCamera(16384, 16384, 1.0))
    view = ConeView.looking_at([0, -1000.0, 0], [0, 0, 0], distance_to_intensifier=1300.0, pitch=1.0,
                               width=16384, height=16384)
    with pytest.raises(ValueError, match=r"poses = 16 images of 16384 x 16384 px"):
        R.render_cone(vol, view, np.zeros((16, 6)))
    R.check_image_batch(2, 8, 8)  # within the limits: no error
    with pytest.raises(ValueError, match=r"--count = 100000000000: expected 0 to 16777216"):
        R.check_image_batch(10**11, 8, 8, names=("--count", "--size", "--size"))


def test_registration_and_refine_wrappers_check_counts(dual_views):
    from fluororeg.core import refine, registration

    n = _core.MAX_POINTS + 1
    with pytest.raises(ValueError, match=r"landmarks has 1048577 rows: expected at most 1048576"):
        registration.register_frames(np.zeros((n, 3)), dual_views, np.zeros((1, 2, n, 2)))
    options = refine.RefineOptions()
    options.num_threads = 1 << 30
    images = np.zeros((1, 2, 96, 96), np.float32)
    with pytest.raises(ValueError, match=r"options.num_threads = 1073741824: expected 0 \(all cores\) to 1024"):
        refine.refine_similarity(_tiny_volume(), dual_views, images, np.zeros((1, 6)), options=options)


def test_render_cli_rejects_a_huge_size_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "fluororeg", "render", "--size", "1073741824", "--count", "16",
                          "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "--size 1073741824: expected 8 to 16384 pixels" in lines[0]
    assert not (tmp_path / "out").exists()


def test_huge_zero_stride_inputs_are_refused_before_any_copy():
    """A broadcast view of 2^40 elements costs nothing until copied (fuzz suite: MemoryError)."""
    import fluororeg as fr
    from fluororeg import _core
    from fluororeg.core.volume import MAX_VOLUME_VOXELS, Volume
    from fluororeg.simulation.simulate import default_dual_views

    assert MAX_VOLUME_VOXELS == _core.MAX_VOLUME_VOXELS
    with pytest.raises(ValueError, match="voxels"):
        Volume(np.broadcast_to(np.zeros(1, np.float32), (6, 1 << 40, 8)), [1, 1, 1], [0, 0, 0])
    with pytest.raises(ValueError, match="values per call"):
        fr.register_frames(np.zeros((6, 3)), default_dual_views(128, 128, 2.4),
                           np.broadcast_to(np.zeros(1, np.complex64), (1 << 40, 3)))
    # Points to project, scales and the refinement's inputs (a longer fuzz run met the first two).
    from fluororeg.core import refine, render
    from fluororeg.core.geometry import ParallelCamera
    from fluororeg.core.temporal import smooth_poses

    views = default_dual_views(16, 16, 20.0)
    huge_points = np.broadcast_to(np.zeros(1), (1 << 40, 3))
    with pytest.raises(ValueError, match="points has shape .* values per call"):
        render.project_cone(huge_points, views[0], np.zeros(6))
    with pytest.raises(ValueError, match="poses has shape .* values per call"):
        smooth_poses(np.broadcast_to(np.zeros(1), (1 << 40, 6)), 10.0, 100.0)
    with pytest.raises(ValueError, match="scales has shape .* values per call"):
        render.project_parallel(np.zeros((1, 3)), np.zeros((2, 6)), ParallelCamera(16, 16, 1.0),
                                scales=np.broadcast_to(np.ones(1), (1 << 40,)))
    volume = Volume(np.zeros((8, 8, 8), np.float32), [1, 1, 1], [-4, -4, -4])
    images = np.zeros((1, 2, 16, 16), np.float32)
    # Frames are limited by their count (the core's MAX_BATCH), not by values: a chunk of 64 wrist
    # frame pairs of 1760 x 1760 px holds 4 x 10^8 values.
    for name, value, said in (("init_poses", np.broadcast_to(np.zeros(1), (1 << 40, 6)), "values per call"),
                              ("images", np.broadcast_to(np.zeros(1, np.float32), (1 << 38, 2, 16, 16)),
                               "frame pairs: expected at most"),
                              ("view_weights", np.broadcast_to(np.ones(1), (1 << 40, 2)), "values per call")):
        args = {"images": images, "init_poses": np.zeros((1, 6)), "view_weights": None, name: value}
        with pytest.raises(ValueError, match=f"{name} .*{said}"):
            refine.refine_poses(volume, views, args["images"], args["init_poses"], view_weights=args["view_weights"])


def test_frames_that_cannot_fit_are_refused_before_the_copy():
    """refine_poses' float32 copy of its frames is checked against what the process may allocate
    (a fuzz run: 2^20 zero-stride frame pairs, 4.5 GiB as float32, ended in MemoryError under the
    harness's address-space limit). Run in a child under such a limit; without one, the bound is
    the machine's physical memory."""
    import resource

    from fluororeg.core.memory import allocatable_bytes

    bytes_left, why = allocatable_bytes()
    assert bytes_left > 0
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        assert "physical memory" in why, why
    script = textwrap.dedent("""
        import resource, numpy as np
        from fluororeg.core import refine
        from fluororeg.core.memory import allocatable_bytes
        from fluororeg.core.volume import Volume
        from fluororeg.simulation.simulate import default_dual_views
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (mapped + (1 << 30), resource.RLIM_INFINITY))
        left, why = allocatable_bytes()
        assert 0 < left <= 1 << 30 and "RLIMIT_AS" in why, (left, why)
        views = default_dual_views(24, 24, 20.0)
        volume = Volume(np.zeros((8, 8, 8), np.float32), [1, 1, 1], [-4, -4, -4])
        frames = np.broadcast_to(np.zeros((), np.float64), (1 << 20, 2, 24, 24))
        try:
            refine.refine_poses(volume, views, frames, np.zeros((1 << 20, 6)))
        except ValueError as exc:
            print(exc)
        # The other image stacks converted to float32 before the core sees them.
        from fluororeg.core import render
        said = []
        for call in (lambda: refine.intensity_to_line_integrals(frames),
                     lambda: render.window_to_uint8(frames[:, 0]), lambda: render.to_uint8(frames[:, 0])):
            try:
                call()
            except ValueError as exc:
                said.append("RLIMIT_AS" in str(exc))
        print(said)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    said, others = run.stdout.strip().splitlines()
    assert "images (1048576, 2, 24, 24) as float32 need 4.5 GiB" in said and "RLIMIT_AS" in said, said
    assert "refine fewer frames per call" in said
    assert others == "[True, True, True]", others
