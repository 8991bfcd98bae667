"""The artificial radiograph-landmark dataset: content, reproducibility, resume, reader."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy.ndimage import binary_dilation, binary_erosion

from fluororeg.dataset import generate as D
from fluororeg.core import render as R
from fluororeg.dataset.generate import DatasetConfig, DatasetReader, PoseRanges, generate_dataset

SMALL = DatasetConfig(n_train=40, n_test=12, image_size=64, pixel_mm=4.0, shard_size=16, seed=3,
                      segmented_share=0.5)
LPS_AXES = dict(superior_axis=(0, 0, 1), anterior_axis=(0, -1, 0))   # a nominal LPS head CT's anatomy


@pytest.fixture(scope="module")
def small_dataset(subject, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "a"
    generate_dataset(subject, root, SMALL, progress=False)
    return root


def test_dataset_content_matches_the_renderers(subject, small_dataset):
    meta = json.loads((small_dataset / "dataset.json").read_text())
    assert meta["subject_fingerprint"] == subject.fingerprint
    assert meta["splits"] == {"train": 40, "test": 12}
    assert meta["landmark_names"] == list(subject.landmark_names)
    train, test = DatasetReader(small_dataset, "train"), DatasetReader(small_dataset, "test")
    assert len(train) == 40 and len(test) == 12
    assert len(list((small_dataset / "train").glob("shard_*.h5"))) == 3
    s = train[17]
    assert s["image"].shape == (64, 64) and s["image"].dtype == np.uint8
    assert s["mask"].shape == (64, 64) and set(np.unique(s["mask"])) <= {0, 1}
    assert s["landmarks_px"].shape == (6, 2) and s["visible"].shape == (6,)
    camera = SMALL.camera
    xy, inside = R.project_parallel(subject.landmarks_model, s["pose"], camera, s["scale"])
    np.testing.assert_allclose(s["landmarks_px"], xy[0], atol=1e-4)
    np.testing.assert_array_equal(s["visible"], inside[0])
    np.testing.assert_allclose(s["landmarks_norm"], (s["landmarks_px"] - 31.5) / 31.5, atol=1e-6)
    drr = R.render_parallel(subject.attenuation_model(), s["pose"], camera, s["scale"])[0]
    if s["segmented"]:
        drr = drr * s["mask"]
    np.testing.assert_array_equal(s["image"], R.to_uint8(drr, window=(0.0, float(s["window_hi"]))))
    # The landmarks lie on bone, so visible ones fall on (or next to) the projected mask.
    for (x, y), vis in zip(s["landmarks_px"], s["visible"]):
        if vis:
            yy, xx = int(round(y)), int(round(x))
            assert s["mask"][max(yy - 1, 0):yy + 2, max(xx - 1, 0):xx + 2].any()


def test_segmented_share_and_segmentation(small_dataset):
    reader = DatasetReader(small_dataset, "train")
    seg = np.array([reader[i]["segmented"] for i in range(len(reader))])
    assert 0.25 < seg.mean() < 0.75  # share 0.5 of 40 samples
    for i in np.nonzero(seg)[0][:5]:
        s = reader[int(i)]
        assert np.all(s["image"][s["mask"] == 0] == 0)
    unseg = reader[int(np.nonzero(~seg)[0][0])]
    assert np.any(unseg["image"][unseg["mask"] == 0] > 0)  # soft tissue outside the bone


def test_same_seed_same_dataset_and_other_seed_differs(subject, small_dataset, tmp_path):
    # one renderer thread (a study's worker) gives exactly the dataset all cores give
    generate_dataset(subject, tmp_path / "b", SMALL, progress=False, num_threads=1)
    a, b = DatasetReader(small_dataset, "test"), DatasetReader(tmp_path / "b", "test")
    for i in (0, 5, 11):
        for key in ("image", "pose", "landmarks_px", "mask"):
            np.testing.assert_array_equal(a[i][key], b[i][key])
    other = DatasetConfig(**{**SMALL.__dict__, "seed": 4})
    generate_dataset(subject, tmp_path / "c", other, progress=False)
    assert not np.array_equal(DatasetReader(tmp_path / "c", "test")[0]["pose"], a[0]["pose"])


def _interrupt_third_render(monkeypatch):
    """Ctrl-C in the dataset's third shard render: (the call counter, the real render step)."""
    calls = {"n": 0}
    real = D._project_samples

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "_project_samples", flaky)
    return calls, real


def test_rendering_ahead_gives_the_same_dataset(subject, small_dataset, tmp_path, monkeypatch):
    # On CUDA the next shard renders in a worker thread while this one is written: the same
    # shards, in the same order; here forced on the CPU.
    monkeypatch.setattr(D, "_render_ahead", lambda device: True)
    generate_dataset(subject, tmp_path / "ahead", SMALL, progress=False)
    for split in ("train", "test"):
        a, b = DatasetReader(small_dataset, split), DatasetReader(tmp_path / "ahead", split)
        assert len(a) == len(b)
        for i in range(0, len(a), 7):
            for key in ("image", "pose", "landmarks_px", "mask", "window_hi"):
                np.testing.assert_array_equal(a[i][key], b[i][key])
    # An interrupt while a shard renders ahead keeps the finished shards and leaves no temporary file.
    _interrupt_third_render(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(subject, tmp_path / "cut", SMALL, progress=False)
    assert len(list((tmp_path / "cut" / "train").glob("shard_*.h5"))) == 2
    assert not list((tmp_path / "cut").rglob("*.tmp"))


def test_interrupted_run_resumes_without_redoing_shards(subject, small_dataset, tmp_path, monkeypatch):
    calls, real = _interrupt_third_render(monkeypatch)
    root = tmp_path / "r"
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(subject, root, SMALL, progress=False)
    done = sorted((root / "train").glob("shard_*.h5"))
    assert len(done) == 2 and not list(root.rglob("*.tmp"))
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    with pytest.raises(FileNotFoundError, match="incomplete"):
        DatasetReader(root, "train")
    monkeypatch.setattr(D, "_project_samples", real)
    calls["n"] = 0
    counter = {"n": 0}

    def counting(*args, **kwargs):
        counter["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "_project_samples", counting)
    generate_dataset(subject, root, SMALL, progress=False)
    assert counter["n"] == 2  # one train shard and one test shard left
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    resumed, clean = DatasetReader(root, "train"), DatasetReader(small_dataset, "train")
    for i in range(0, 40, 7):
        np.testing.assert_array_equal(resumed[i]["image"], clean[i]["image"])


def test_other_configuration_in_the_same_folder_is_refused(subject, small_dataset):
    other = DatasetConfig(**{**SMALL.__dict__, "image_size": 32})
    with pytest.raises(ValueError, match="another subject or configuration"):
        generate_dataset(subject, small_dataset, other, progress=False)


def test_reader_batches_cover_every_sample_once(small_dataset):
    reader = DatasetReader(small_dataset, "train")
    poses = np.concatenate([b["pose"] for b in reader.batches(7, shuffle=True, seed=1)])
    assert len(poses) == 40
    expected = np.stack([reader[i]["pose"] for i in range(40)])
    assert len({tuple(p) for p in poses}) == 40
    assert {tuple(p) for p in poses} == {tuple(p) for p in expected}
    first = next(reader.batches(5, shuffle=False))
    np.testing.assert_array_equal(first["pose"], expected[:5])
    with pytest.raises(IndexError):
        reader[40]


def test_contact_sheet(small_dataset, tmp_path):
    from PIL import Image

    from fluororeg.viz.contact_sheet import dataset_contact_sheet

    path = dataset_contact_sheet(DatasetReader(small_dataset, "test"), tmp_path / "sheet.png", n=10, columns=4)
    img = np.asarray(Image.open(path))
    assert img.shape == (3 * 130, 4 * 130, 3)
    assert (img == [255, 220, 0]).all(axis=-1).any()  # mask outlines drawn


def test_pose_ranges_view_the_subject_horizontally_with_superior_up(subject):
    rng = np.random.default_rng(0)
    ranges = PoseRanges(elevation_deg=(0, 0), roll_deg=(0, 0), translation_mm=(0, 0), scale=(1, 1))
    with pytest.raises(ValueError, match="subject's axes"):
        D.sample_poses(rng, 50, ranges)
    poses, scales = D.sample_poses(rng, 50, ranges.for_subject(subject))
    top = subject.landmark_names.index("top")
    bottom = subject.landmark_names.index("bottom")
    xy, _ = R.project_parallel(subject.landmarks_model, poses, SMALL.camera, scales)
    assert np.all(xy[:, top, 1] < xy[:, bottom, 1])  # superior is up in every image
    # The beam stays horizontal: the camera z axis has no superior component.
    from fluororeg.core.geometry import rotation_matrix
    Rm = rotation_matrix(poses[:, :3])
    np.testing.assert_allclose(Rm[:, 2, :] @ np.array([0, 0, 1.0]), 0, atol=1e-12)
    az0, _ = D.sample_poses(np.random.default_rng(1), 1, PoseRanges(azimuth_deg=(0, 0), elevation_deg=(0, 0),
                                                                     roll_deg=(0, 0), **LPS_AXES))
    np.testing.assert_allclose(rotation_matrix(az0[0, :3])[2], [0, 1, 0], atol=1e-12)  # looks posterior


def test_default_azimuths_see_the_subject_from_its_front_half():
    """Front half only: a view from behind is a mirror image with swapped labels (see dataset)."""
    from fluororeg.core.geometry import rotation_matrix

    ranges = PoseRanges(**LPS_AXES)
    poses, _ = D.sample_poses(np.random.default_rng(2), 2000, ranges)
    beam = rotation_matrix(poses[:, :3])[:, 2, :]          # camera +z in model coordinates
    toward_front = beam @ np.array(ranges.anterior_axis)   # < 0: rays run from the front backward
    assert np.all(toward_front <= 1e-9)
    assert toward_front.max() > -0.05 and toward_front.min() < -0.99  # lateral and frontal views occur


def test_cone_samples_match_the_cone_renderer_and_tend_to_parallel_far_away(subject):
    camera = SMALL.camera
    poses, scales = D.sample_poses(np.random.default_rng(5), 6, SMALL.poses.for_subject(subject))
    seg = np.zeros(6, bool)
    far = D.render_samples(subject, poses, scales, seg, camera, source_distance_mm=np.full(6, 1e6))
    par = D.render_samples(subject, poses, scales, seg, camera)
    np.testing.assert_allclose(far["landmarks_px"], par["landmarks_px"], atol=2e-3)
    assert np.mean(np.abs(far["image"].astype(int) - par["image"].astype(int))) < 2.0
    assert np.mean(far["mask"] != par["mask"]) < 0.01
    # Nearer sources magnify the parts of the bone nearer the source more (perspective).
    sod = np.full(6, 400.0)
    near = D.render_samples(subject, poses, scales, seg, camera, source_distance_mm=sod)
    np.testing.assert_array_equal(near["source_distance_mm"], sod)
    views = D.cone_views(camera, scales, sod)
    xy, _ = R.project_cone(subject.landmarks_model, views, poses)
    np.testing.assert_allclose(near["landmarks_px"], xy, atol=1e-4)
    from fluororeg.core.geometry import pose_matrix

    M = pose_matrix(poses)
    z = np.einsum("nij,mj->nmi", M[:, :3, :3], subject.landmarks_model)[..., 2] + M[:, None, 2, 3]  # depth, mm
    c = (camera.width - 1) / 2
    r_par = np.linalg.norm(par["landmarks_px"] - c, axis=-1)
    ratio = np.linalg.norm(near["landmarks_px"] - c, axis=-1) / np.maximum(r_par, 1e-9)
    off_centre = r_par > 2.0
    np.testing.assert_allclose(ratio[off_centre], (400.0 / (400.0 + z))[off_centre], rtol=1e-3)


def test_cone_dataset_records_its_projection(subject, tmp_path):
    cfg = DatasetConfig(n_train=8, n_test=0, image_size=32, pixel_mm=8.0, shard_size=8, projection="cone",
                        source_distance_mm=(500.0, 800.0))
    generate_dataset(subject, tmp_path / "cone", cfg, progress=False)
    meta = json.loads((tmp_path / "cone" / "dataset.json").read_text())
    assert meta["config"]["projection"] == "cone" and meta["config"]["source_distance_mm"] == [500.0, 800.0]
    sod = np.array([DatasetReader(tmp_path / "cone")[i]["source_distance_mm"] for i in range(8)])
    assert np.all((sod >= 500.0) & (sod <= 800.0)) and np.ptp(sod) > 0
    # The default renderer (perspective shear-warp) against ray marching: the same samples, and
    # pictures and masks that differ little.
    assert meta["config"]["cone_method"] == "shear_warp"
    generate_dataset(subject, tmp_path / "marched", replace(cfg, cone_method="march"), progress=False)
    sheared, marched = DatasetReader(tmp_path / "cone"), DatasetReader(tmp_path / "marched")
    for i in range(8):
        a, b = sheared[i], marched[i]
        np.testing.assert_array_equal(a["pose"], b["pose"])
        np.testing.assert_array_equal(a["landmarks_px"], b["landmarks_px"])
        # masks differ near their outlines only (within 2 px; 32 px images of 8 mm, where an outline
        # is a tenth of the pixels)
        m = b["mask"].astype(bool)
        outline = binary_dilation(m, iterations=2) & ~binary_erosion(m, iterations=2)
        assert np.all((a["mask"] != b["mask"]) <= outline)
        assert (a["mask"] != b["mask"]).mean() < 0.06
        assert np.abs(a["image"].astype(float) - b["image"]).mean() < 4.0


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="projection 'fan'"):
        DatasetConfig(projection="fan")
    with pytest.raises(ValueError, match="cone_method 'slices'"):
        DatasetConfig(projection="cone", cone_method="slices")
    with pytest.raises(ValueError, match="source_distance_mm"):
        DatasetConfig(projection="cone", source_distance_mm=(100.0, 900.0))
    with pytest.raises(ValueError, match="source_distance_mm"):
        DatasetConfig(projection="cone", source_distance_mm=(900.0, 600.0))
    with pytest.raises(ValueError, match="n_train"):
        DatasetConfig(n_train=-1)
    with pytest.raises(ValueError, match="segmented_share"):
        DatasetConfig(segmented_share=1.5)
    with pytest.raises(ValueError, match="image_size"):
        DatasetConfig(image_size=4)
    with pytest.raises(ValueError, match="nothing to generate"):
        DatasetConfig(n_train=0, n_test=0)
    with pytest.raises(ValueError, match="elevation_deg"):
        PoseRanges(elevation_deg=(10, -10))
    with pytest.raises(ValueError, match="orthogonal"):
        PoseRanges(superior_axis=(0, 0, 1), anterior_axis=(0, 0.5, 1))
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        DatasetReader("/nonexistent/folder")
    with pytest.raises(ValueError, match="split"):
        DatasetReader("/nonexistent/folder", "validation")


def _render_both_projections(subject, device, volumes=None, cone_method="march"):
    poses, scales = D.sample_poses(np.random.default_rng(9), 6, SMALL.poses.for_subject(subject))
    seg = np.array([True, False] * 3)
    sod = np.linspace(500.0, 800.0, 6)
    return [D.render_samples(subject, poses, scales, seg, SMALL.camera, device, s, volumes, cone_method=cone_method)
            for s in (None, sod)]


def test_prepared_subject_volumes_render_the_same_samples(subject):
    plain = _render_both_projections(subject, "cpu")
    prepared = _render_both_projections(subject, "cpu", D.prepare_subject_volumes(subject, "cpu"))
    for a, b in zip(plain, prepared):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with pytest.raises(ValueError, match="device 'gpu'"):
        generate_dataset(subject, None, SMALL, device="gpu", write=False, progress=False)


@pytest.mark.skipif(not R._core.cuda_available(), reason="no CUDA device")
@pytest.mark.parametrize("cone_method", R.CONE_METHODS)
def test_cuda_dataset_samples_match_cpu(subject, cone_method):
    # One cone method on both devices ('auto' picks a different one on each).
    cpu = _render_both_projections(subject, "cpu", cone_method=cone_method)
    gpu = _render_both_projections(subject, "cuda", D.prepare_subject_volumes(subject, "cuda"), cone_method)
    for a, b in zip(cpu, gpu):
        np.testing.assert_allclose(a["landmarks_px"], b["landmarks_px"], atol=1e-6)
        np.testing.assert_array_equal(a["visible"], b["visible"])
        assert np.mean(a["mask"] != b["mask"]) < 1e-3
        diff = np.abs(a["image"].astype(int) - b["image"].astype(int))
        assert np.mean(diff > 1) < 0.01 and diff.mean() < 0.2
    assert D.prepare_subject_volumes(subject, "auto")[0].device == "cuda"
