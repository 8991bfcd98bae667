"""Registering a recording end to end with real (tiny, briefly trained) networks: crops,
style translation, detection, undistortion, registration, files, resume."""

from __future__ import annotations

import dataclasses
from dataclasses import replace

import numpy as np
import pytest

from fluororeg import _core

from fluororeg.dataset.generate import DatasetConfig, generate_dataset
from fluororeg.inference.detector import LandmarkDetector
from fluororeg.inference.translator import StyleTranslator, preferred_style
from fluororeg.training.detector_config import DetectorConfig
from fluororeg.training.detector_export import export_detector
from fluororeg.training.detector_train import train_detector
from fluororeg.training.translator_config import TranslatorConfig
from fluororeg.training.translator_export import export_translator
from fluororeg.training.translator_train import train_translator
from fluororeg.inference.crops import crop_box_for_view
from fluororeg.pipeline.register import PipelineOptions, register_recording
from fluororeg.pipeline.quality import format_qc
from fluororeg.io.poses import read_poses_csv, read_tra
from fluororeg.io.recording import open_recording
import json

from fluororeg.core.registration import (GATE_STATUSES, INPUT_STATUSES, STATUSES, RegistrationOptions,
                                         check_view_agreement, mean_landmark_distance, pose_errors, register_frames,
                                         triangulated_poses)
from fluororeg.training.translator_selection import score_snapshots, select_translator_snapshot, snapshot_paths
from fluororeg.core.refine import refine_poses
from fluororeg.pipeline.refine_stage import recording_images
from fluororeg.simulation.simulate import default_dual_views, simulate_recording


@pytest.fixture(scope="module")
def models(subject, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    ds = generate_dataset(subject, root / "ds", DatasetConfig(n_train=48, n_test=8, image_size=64, pixel_mm=4.0,
                                                              shard_size=32), progress=False)
    rec = simulate_recording(subject, root / "rec", n_frames=5, views=default_dual_views(192, 192, pitch=1.6), seed=2)
    det_cfg = DetectorConfig(arch="heatmap", width=8, input_size=64, epochs=1, batch_size=16, num_threads=1)
    train_detector(ds, root / "det", det_cfg, progress=False)
    detector_path = export_detector(root / "det", root / "detector.onnx")
    style_cfg = TranslatorConfig(image_size=64, gen_width=8, gen_blocks=1, disc_width=8, steps=4, log_every=2,
                            checkpoint_every=2, snapshot_every=2)
    train_translator(rec, ds, root / "style", style_cfg, progress=False, num_threads=1)
    x2d, _ = export_translator(root / "style", root / "style_onnx")
    return {"root": root, "recording": rec, "detector": LandmarkDetector(detector_path, subject=subject),
            "translator": StyleTranslator(x2d, direction="xray_to_drr")}


def test_register_recording_writes_consistent_results(subject, models, tmp_path):
    rec = open_recording(models["recording"])
    opts = PipelineOptions(chunk=2, min_visible=4, refine=False)  # the landmark path and its gate
    out = register_recording(rec, subject, models["detector"], models["translator"], opts, out_dir=tmp_path,
                             progress=False)
    F, N = len(rec), len(subject.landmark_names)
    assert out.detections.shape == (F, 2, N, 2) and out.confidence.shape == (F, 2, N)
    assert set(out.status) <= set(STATUSES) - set(INPUT_STATUSES)  # simulated input: nothing unusable
    # The quality gate: no frame is registered unless its pose is right (this one-epoch detector's
    # poses are 40-60 deg off; the gate's residual at the bone says so). Gated poses stay in batch.
    truth = np.load(models["recording"] / "truth.npz")["poses"]
    ok = out.batch.ok
    assert np.all(pose_errors(np.nan_to_num(out.poses[ok]), truth[ok])[0] < 10.0)
    np.testing.assert_array_equal(out.poses, np.where(ok[:, None], out.batch.poses, np.nan))
    gated = np.isin(out.status, GATE_STATUSES)
    assert np.isfinite(out.batch.poses[gated]).all()
    limit = opts.residual_limit_mm(models["detector"])  # from the detector's recorded validation error
    needed = np.maximum(4, np.ceil(0.5 * out.batch.n_vis))
    large = ~(out.batch.rms_bone_mm <= limit).all(axis=1)
    assert np.array_equal(out.status == "large_residual", large & gated)
    assert np.all((out.batch.inliers[out.status == "few_inliers"] < needed[out.status == "few_inliers", None]).any(axis=1))
    # QC: summary, qc.json and qc.png.
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc == json.loads(json.dumps(out.qc)) and sum(qc["counts"].values()) == F
    assert qc["max_residual_mm"] == pytest.approx(limit)
    assert (tmp_path / "qc.png").stat().st_size > 1000
    header = (tmp_path / "poses.csv").read_text().splitlines()[0].split(",")
    assert {"residual_bone_mm_view1", "residual_bone_mm_view2", "inliers_view1", "inliers_view2"} <= set(header)
    table = read_poses_csv(tmp_path / "poses.csv")
    assert list(table["frame"]) == list(range(F))
    np.testing.assert_array_equal(table["status"], out.status)
    np.testing.assert_allclose(table["poses"], out.poses, equal_nan=True)
    assert read_tra(tmp_path / "poses.tra").shape == (F, 4, 4)
    # Detections are undistorted frame pixels inside the image (or NaN), weights in [0, 1].
    d = out.detections[np.isfinite(out.detections)]
    assert d.min() >= -0.5 - 20 and d.max() < 192 + 20
    assert np.all((out.confidence >= 0) & (out.confidence <= 1))
    # The registration step is exactly the batch solver on those detections from the
    # triangulated starts (the paper's where too few landmarks are seen in both views), then the
    # check of the two views' agreement.
    kw = dict(pairs=subject.pairs, loss="cauchy", loss_scale_mm=6.0, min_visible=4,
              options=RegistrationOptions(max_residual_mm=limit))
    starts = triangulated_poses(subject.landmarks_model, rec.geometry.views,
                                np.where(out.confidence[..., None] > 0, out.detections, np.nan),
                                subject.mirror_permutation())
    again = register_frames(subject.landmarks_model, rec.geometry.views, out.detections, weights=out.confidence,
                            init_poses=starts, **kw)
    again = check_view_agreement(subject.landmarks_model, rec.geometry.views, out.detections, again,
                                 weights=out.confidence, **kw)
    np.testing.assert_allclose(again.poses, out.batch.poses, equal_nan=True, atol=1e-9)
    np.testing.assert_array_equal(again.status, out.status)
    # A second run resumes from the saved detection chunks (files untouched, same result).
    chunks = sorted((tmp_path / "detections").glob("chunk_*.npz"))
    assert len(chunks) == 3
    mtimes = [c.stat().st_mtime_ns for c in chunks]
    out2 = register_recording(rec, subject, models["detector"], models["translator"], opts, out_dir=tmp_path,
                              progress=False)
    assert [c.stat().st_mtime_ns for c in chunks] == mtimes
    np.testing.assert_array_equal(out2.detections, out.detections)
    # Other settings (here the style) never reuse those detections: they are made again.
    inverted = register_recording(rec, subject, models["detector"], None, PipelineOptions(chunk=2, min_visible=4,
                                  style="invert"), progress=False)
    with pytest.warns(UserWarning, match=r"other settings \(style, translator_sha256\); detecting again"):
        out3 = register_recording(rec, subject, models["detector"], None, PipelineOptions(chunk=2, min_visible=4,
                                  style="invert"), out_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(out3.detections, inverted.detections)
    assert not np.array_equal(out3.detections, out.detections, equal_nan=True)
    # So does another geometry (a recalibration): the crops and the undistortion change.
    from fluororeg.calibration.geometry_file import load_geometry

    geometry = load_geometry(rec.path / "geometry.json")
    moved = dataclasses.replace(geometry, views=tuple(dataclasses.replace(v, pitch_u=v.pitch_u * 1.1, pitch_v=v.pitch_v * 1.1)
                                                      for v in geometry.views))
    recalibrated = dataclasses.replace(rec, geometry=moved)
    with pytest.warns(UserWarning, match=r"other settings \(geometry_sha256\)"):
        out4 = register_recording(recalibrated, subject, models["detector"], None, PipelineOptions(
            chunk=2, min_visible=4, style="invert"), out_dir=tmp_path, progress=False)
    assert not np.array_equal(out4.detections, out3.detections, equal_nan=True)


def test_styles_previous_init_and_errors(subject, models):
    rec = open_recording(models["recording"])
    out = register_recording(rec, subject, models["detector"], None,
                             PipelineOptions(style="invert", init="previous", min_visible=4), progress=False)
    assert len(out.poses) == len(rec) and len(out.batch) == len(rec)
    np.testing.assert_array_equal(np.where(out.batch.ok[:, None], out.batch.poses, np.nan), out.poses)
    with pytest.raises(ValueError, match="needs a style translator"):
        register_recording(rec, subject, models["detector"], None, PipelineOptions(), progress=False)
    with pytest.raises(ValueError, match="style 'gan'"):
        PipelineOptions(style="gan")
    with pytest.raises(ValueError, match="smoothing_hz = -1.0"):
        PipelineOptions(smoothing_hz=-1.0)
    with pytest.raises(ValueError, match="fps = 0"):
        PipelineOptions(fps=0)
    with pytest.raises(ValueError, match="cutoff < fps / 2 = 50.0"):
        PipelineOptions(smoothing_hz=60.0, fps=100.0)
    with pytest.raises(ValueError, match="view_outlier_ratio = 1.0"):
        PipelineOptions(view_outlier_ratio=1.0)
    with pytest.raises(ValueError, match="only available with mode='least_squares'"):
        PipelineOptions(mode="frobenius")  # the default Cauchy loss: refused before any work
    assert PipelineOptions(mode="frobenius", loss=None).mode == "frobenius"
    with pytest.raises(ValueError, match="min_visible = 3: expected at least 4"):
        PipelineOptions(min_visible=3)
    with pytest.raises(ValueError, match="min_confidence = 1.5"):
        PipelineOptions(min_confidence=1.5)
    with pytest.raises(ValueError, match="init 'centre' is unknown: expected one of"):
        PipelineOptions(init="centre")
    with pytest.raises(ValueError, match="refine_device 'gpu' is unknown"):
        PipelineOptions(refine_device="gpu")
    from fluororeg.subject.subject import make_subject

    other = make_subject("other", subject.ct, subject.landmarks, pairs=[], origin=subject.origin + 1.0)
    with pytest.raises(ValueError, match="fingerprint"):
        register_recording(rec, other, models["detector"], models["translator"], progress=False)


def test_smoothing_uses_the_recording_frame_rate_and_fails_before_detecting(subject, models, tmp_path, monkeypatch):
    import json

    import fluororeg.pipeline.register as pipeline
    from fluororeg.core.temporal import smooth_poses

    folder = simulate_recording(subject, tmp_path / "rec", scenario="flexion_extension", n_frames=18,
                                views=default_dual_views(192, 192, pitch=1.6), seed=4)
    # The smoothing's mechanics: no quality gate and no refinement (this one-epoch detector's
    # poses would all fail them).
    opts = PipelineOptions(style="invert", min_visible=4, smoothing_hz=3.0, quality_gate=False, refine=False)
    with pytest.raises(ValueError, match="needs the frame rate"):  # simulated: no frame rate known
        register_recording(open_recording(folder), subject, models["detector"], None, opts, progress=False)
    manifest = folder / "recording.json"
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), frame_rate_hz=30)))
    rec = open_recording(folder)
    assert rec.frame_rate_hz == 30.0
    out = register_recording(rec, subject, models["detector"], None, opts, progress=False)
    registered = np.isfinite(out.batch.poses).all(axis=1)
    np.testing.assert_allclose(out.poses, smooth_poses(out.batch.poses, 3.0, 30.0), equal_nan=True)
    assert np.isnan(out.poses[~registered]).all()  # smoothing never invents a pose
    assert not np.allclose(out.poses[registered], out.batch.poses[registered])
    # Too few registered frames for the filter (here all but 5 are taken as failed after the real
    # registration): the registrations are kept unsmoothed, with a warning.
    real_register = pipeline.register_detections

    def five_registered(*args, **kwargs):
        batch = real_register(*args, **kwargs)
        poses, status = batch.poses.copy(), batch.status.copy()
        poses[5:], status[5:] = np.nan, "failed"
        return dataclasses.replace(batch, poses=poses, status=status)

    monkeypatch.setattr(pipeline, "register_detections", five_registered)
    with pytest.warns(UserWarning, match="only 5 frames are registered and smoothing needs at least 16: the poses "
                                         "are written unsmoothed"):
        unsmoothed = register_recording(rec, subject, models["detector"], None, opts, out_dir=tmp_path / "few",
                                        progress=False)
    np.testing.assert_array_equal(unsmoothed.poses, unsmoothed.batch.poses)
    assert json.loads((tmp_path / "few" / "options.json").read_text())["smoothed"] is False
    assert (tmp_path / "few" / "poses.csv").exists()
    # Settings that cannot work fail before any frame is read (the recording of 5 frames is too
    # short for the filter; a cut-off above half the frame rate is impossible).
    monkeypatch.setattr(pipeline, "detect_recording", lambda *a, **k: pytest.fail("detected despite bad settings"))
    with pytest.raises(ValueError, match="at least 16 frames; the recording has 5"):
        register_recording(open_recording(models["recording"]), subject, models["detector"], None,
                           PipelineOptions(style="invert", smoothing_hz=3.0, fps=30.0), progress=False)
    with pytest.raises(ValueError, match="cutoff < fps / 2 = 15.0"):
        register_recording(rec, subject, models["detector"], None, PipelineOptions(style="invert", smoothing_hz=20.0),
                           progress=False)
    if not _core.cuda_available():  # refinement asked of a GPU that is not there
        with pytest.raises(RuntimeError, match="device='cuda' was requested but"):
            register_recording(rec, subject, models["detector"], None,
                               PipelineOptions(style="invert", refine_device="cuda"), progress=False)
    manifest.write_text(json.dumps(dict(json.loads(manifest.read_text()), frame_rate_hz="fast")))
    with pytest.raises(ValueError, match="frame_rate_hz = 'fast': expected a positive number"):
        open_recording(folder)


def test_register_refines_by_default_and_its_similarity_is_the_final_gate(subject, models, tmp_path):
    """Default options refine every landmark pose; a frame is registered only when its
    refinement passes, so no registered frame is far off, even from this one-epoch detector's
    poses (40-60 deg off); poses.csv carries the refinement columns, the QC report the
    similarity, and the worst frames are drawn."""
    from fluororeg.pipeline.quality import REGISTERED_STATUSES
    from fluororeg.pipeline.refine_stage import REFINE_COLUMNS, REFINE_FAILURE_STATUSES

    rec = open_recording(models["recording"])
    assert PipelineOptions().refine
    out = register_recording(rec, subject, models["detector"], models["translator"], PipelineOptions(min_visible=4),
                             out_dir=tmp_path, progress=False)
    truth = np.load(models["recording"] / "truth.npz")["poses"]
    registered = np.isin(out.status, REGISTERED_STATUSES)
    assert np.array_equal(registered, np.isfinite(out.poses).all(axis=1))
    ang, mm = pose_errors(np.where(registered[:, None], out.poses, truth), truth)
    assert np.all(ang[registered] < 5.0) and np.all(mm[registered] < 5.0), (out.status, ang, mm)
    assert set(out.status) <= set(STATUSES) | set(REGISTERED_STATUSES) | set(REFINE_FAILURE_STATUSES)
    header = (tmp_path / "poses.csv").read_text().splitlines()[0].split(",")
    assert set(REFINE_COLUMNS) <= set(header)
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["refined"]["frames_refined"] >= 1 and len(qc["per_frame"]["similarity"]) == len(rec)
    worst = sorted(tmp_path.glob("qc_worst_*.png"))
    assert len(worst) == len(qc["worst"]) >= 1 and all(p.stat().st_size > 1000 for p in worst)
    assert "intensity refinement" in format_qc(qc)
    # Where the refinement ran ('auto' made concrete) and how long each stage took.
    options = json.loads((tmp_path / "options.json").read_text())
    assert options["refine_device"] == "auto"
    assert options["refined_on"] == ("cuda" if _core.cuda_available() else "cpu")
    assert list(out.stage_seconds) == ["detect", "input_checks", "register", "refine", "write"]
    assert all(t >= 0 for t in out.stage_seconds.values()) and out.stage_seconds["refine"] > 0
    assert sum(out.stage_seconds.values()) <= out.seconds
    assert list(out.stage_cpu_seconds) == list(out.stage_seconds)
    assert all(t >= 0 for t in out.stage_cpu_seconds.values()) and out.stage_cpu_seconds["refine"] > 0


def test_select_style_snapshot_scores_what_the_pipeline_does(subject, models, tmp_path):
    rec = open_recording(models["recording"])
    run = models["root"] / "style"
    assert [step for step, _ in snapshot_paths(run)] == [2, 4]
    # The ranking's mechanics: no quality gate (this one-epoch detector's poses would all fail it).
    opts = PipelineOptions(min_visible=4, quality_gate=False)
    # The label-free score of each candidate: the refinement disagreement of its landmark poses.
    scores = score_snapshots(run, rec, subject, models["detector"], options=opts, progress=False)
    assert [(s.style, s.step) for s in scores] == [("translate", 2), ("translate", 4), ("log", -1), ("invert", -1)]
    x2d, _ = export_translator(scores[1].path, tmp_path / "s4")
    res = register_recording(rec, subject, models["detector"], StyleTranslator(x2d), replace(opts, refine=False),
                             progress=False)
    expect = np.median(np.where(res.batch.ok, res.batch.rms_mm.mean(axis=1), np.inf))
    assert scores[1].residual_mm == pytest.approx(expect)
    images, masks = recording_images(rec)
    refined = refine_poses(subject.attenuation_model(), rec.geometry.views, images, res.batch.poses,
                           bone=subject.mask_model(), image_masks=masks)
    far = mean_landmark_distance(subject.landmarks_model, np.nan_to_num(res.batch.poses), np.nan_to_num(refined.poses))
    expect = np.median(np.where(refined.converged & np.isfinite(res.batch.poses).all(axis=1), far, np.inf))
    assert scores[1].score == pytest.approx(expect) and scores[1].refine_disagreement_mm == scores[1].score
    assert scores[1].refined_share == pytest.approx(refined.converged.mean())
    assert np.isnan(scores[1].landmark_err_mm)
    # Selection among the snapshots; the verdict (translate or not) travels in the exported model.
    truth = np.load(models["recording"] / "truth.npz")["poses"]
    best, chosen_scores, verdict = select_translator_snapshot(run, rec, subject, models["detector"],
                                                              tmp_path / "sel", options=opts, reference=truth,
                                                              progress=False)
    snaps = [s for s in chosen_scores if s.style == "translate"]
    assert best.score == min(s.score for s in snaps)
    chosen = StyleTranslator(tmp_path / "sel" / "xray_to_drr.onnx")
    assert int(chosen.meta["training_step"]) == best.step
    plain = min(s.score for s in chosen_scores if s.style != "translate")
    style, why = chosen.preferred_style()
    assert (style == "translate") == (best.score <= plain) and (why is None) == (style == "translate")
    assert chosen.selection == verdict and preferred_style(verdict) == (style, why)
    assert json.loads((tmp_path / "sel" / "selection.json").read_text())["use_style"] == style
    assert len((tmp_path / "sel" / "selection.csv").read_text().strip().splitlines()) == 5
    # With reference poses the score is the median landmark error to them.
    truth = np.load(models["recording"] / "truth.npz")["poses"]
    scored = score_snapshots(run, rec, subject, models["detector"], reference=truth, options=opts, max_frames=3,
                             progress=False, baselines=())
    ok = res.batch.ok[[0, 2, 4]]
    lm = mean_landmark_distance(subject.landmarks_model, np.where(ok[:, None], res.batch.poses[[0, 2, 4]],
                                                                  truth[[0, 2, 4]]),
                                truth[[0, 2, 4]])
    assert scored[1].score == pytest.approx(np.median(np.where(ok, lm, np.inf)))
    assert scored[1].landmark_err_mm == scored[1].score
    with pytest.raises(ValueError, match=r"expected \(5, 6\)"):
        score_snapshots(run, rec, subject, models["detector"], reference=truth[:3], progress=False)
    with pytest.raises(ValueError, match="style='translate'"):
        score_snapshots(run, rec, subject, models["detector"], options=PipelineOptions(style="log"), progress=False)
    with pytest.raises(ValueError, match="max_frames"):
        score_snapshots(run, rec, subject, models["detector"], max_frames=0, progress=False)
    with pytest.raises(ValueError, match="baseline style 'raw'"):
        score_snapshots(run, rec, subject, models["detector"], baselines=("raw",), progress=False)
    with pytest.raises(FileNotFoundError, match="snapshot-every"):
        snapshot_paths(tmp_path)


def test_select_style_command(subject, models, tmp_path, monkeypatch, capsys):
    import fluororeg.cli as cli
    import fluororeg.cli.common as cli_common

    monkeypatch.setattr(cli_common, "load_subject_arg", lambda folder: subject)
    run, det = models["root"] / "style", models["root"] / "detector.onnx"
    assert cli.main(["select-translator", str(run), str(models["recording"]), "--detector", str(det), "--reference",
                     str(models["recording"] / "truth.npz"), "--out", str(tmp_path / "sel"), "--quiet",
                     "--max-residual-mm", "0", "--allow-undertrained"]) == 0  # no gate: this one-epoch detector fails it
    out = capsys.readouterr().out
    assert "step 2" in out and "step 4" in out and "style log" in out and "<- best snapshot" in out
    assert "mm landmark error" in out
    assert (tmp_path / "sel" / "xray_to_drr.onnx").exists() and (tmp_path / "sel" / "selection.json").exists()
    assert cli.main(["select-translator", str(tmp_path), str(models["recording"]), "--detector", str(det),
                     "--out", str(tmp_path / "x"), "--allow-undertrained"]) == 2
    assert "snapshots" in capsys.readouterr().err


def test_crop_box_matches_the_dataset_pixel_size():
    view = default_dual_views(512, 512, pitch=0.6)[0]
    centre = np.zeros(3)
    box = crop_box_for_view(view, (255.5, 255.5), 128, 2.0, centre)
    # 128 crop pixels of 2 mm at the beam crossing (650 mm from the source, 1050 mm to the detector)
    mm_per_frame_px = 0.6 * 650.0 / 1050.0
    np.testing.assert_allclose(box.side * mm_per_frame_px, 128 * 2.0, rtol=1e-9)
    np.testing.assert_allclose(box.to_frame([63.5, 63.5]), [255.5, 255.5], atol=1e-9)


def test_bone_crop_boxes_centre_the_model_origin(subject, models):
    from fluororeg.inference.crops import bone_crop_boxes, recording_crop_boxes
    from fluororeg.core.render import project_cone

    rec = open_recording(models["recording"])
    truth = np.load(models["recording"] / "truth.npz")["poses"]
    poses = truth.copy()
    poses[1] = np.nan
    poses[3, 3] += 1000.0  # the origin far outside both frames: implausible
    _, fixed = recording_crop_boxes(rec, 64, 4.0)
    boxes = bone_crop_boxes(rec, poses, fixed, 64, 4.0)
    assert len(boxes) == len(rec) and boxes[1] == tuple(fixed) and boxes[3] == tuple(fixed)
    for f in (0, 2):
        for k, view in enumerate(rec.geometry.views):
            xy, _ = project_cone(np.zeros((1, 3)), view, truth[f])
            raw = rec.geometry.distortion[k].distort_points(xy.reshape(1, 2))[0]
            np.testing.assert_allclose(boxes[f][k].to_frame([31.5, 31.5]), raw, atol=1e-6)
            sod = abs(view.normal @ (truth[f, 3:] - view.source))
            mm_per_crop_px = boxes[f][k].side / 64 * view.pitch_u * sod / view.source_intensifier_distance
            np.testing.assert_allclose(mm_per_crop_px, 4.0, rtol=1e-9)


def test_recentring_needs_the_subject(models):
    from fluororeg.pipeline.register import detect_recording

    with pytest.raises(ValueError, match="subject"):
        detect_recording(open_recording(models["recording"]), models["detector"], None, PipelineOptions(style="log"),
                         progress=False)


def test_crops_have_the_dataset_image_size_for_every_style(subject, models, monkeypatch):
    """The detector was trained on images of the dataset's size and pixel size: the pipeline
    crops at that size (the detector resamples to its input), whatever the style."""
    from fluororeg.pipeline.register import detect_recording

    rec = open_recording(models["recording"])
    detector = models["detector"]
    seen = []
    real = detector.detect

    def spy(images):
        seen.append(np.asarray(images).shape[1:])
        return real(images)

    monkeypatch.setattr(detector, "detect", spy)
    monkeypatch.setitem(detector.model.meta, "training_image_size", 96)
    for style in ("log", "invert", "none"):
        detect_recording(rec, detector, None, PipelineOptions(style=style), subject=subject, progress=False)
    assert set(seen) == {(96, 96)}


def test_log_attenuation_crop_inverts_beer_lambert():
    from fluororeg.inference.crops import log_attenuation_crop

    L = np.linspace(0.0, 3.0, 64 * 64).reshape(64, 64)
    raw = 240.0 * np.exp(-0.7 * L)  # open field 240, gamma 0.7
    raw[:4] = 240.0                 # some open field
    out = log_attenuation_crop(raw)
    assert out.dtype == np.uint8 and out[:4].max() == 0  # open field is black, like DRR air
    flat = out[4:].ravel()
    assert np.all(np.diff(flat.astype(int)) >= 0)  # monotonic in the line integral
    assert flat[-1] == 255


def test_unusable_input_is_not_registered(subject, models, tmp_path, monkeypatch):
    """Input checks of register_recording: a blank view and the same image as both views make
    their frames unusable (own status, no pose); a detector whose output ignores its input
    flags the whole recording, with a warning. Absurd geometry is refused before any work."""
    import shutil

    from PIL import Image

    folder = tmp_path / "rec"
    shutil.copytree(models["recording"], folder)
    first = np.asarray(Image.open(folder / "view2" / "frame_00002.png"))
    Image.fromarray(np.full_like(first, 255)).save(folder / "view2" / "frame_00002.png")  # saturated view
    shutil.copy(folder / "view1" / "frame_00003.png", folder / "view2" / "frame_00003.png")  # the same image
    rec = open_recording(folder)
    opts = PipelineOptions(style="invert", min_visible=4, recentre=False, chunk=5)
    out = register_recording(rec, subject, models["detector"], None, opts, out_dir=tmp_path / "out", progress=False)
    assert out.status[2] == "blank_view" and out.status[3] == "same_image"
    assert not set(out.status[[0, 1, 4]]) & set(INPUT_STATUSES)
    assert np.isnan(out.poses[[2, 3]]).all()
    # The frame with one blank view was refined against its other view (tracked from a
    # neighbour); that failed its gate here, so it keeps the input status that caused it.
    import csv

    rows = list(csv.DictReader(open(tmp_path / "out" / "poses.csv")))
    assert rows[2]["landmark_status"] == "blank_view" and rows[2]["refine_tracked"] == "1"
    assert rows[2]["refine_status"] in ("moved_far", "low_similarity", "no_overlap"), rows[2]
    assert rows[3]["refine_status"] == "not_refined"  # the same image as both views: nothing to trust
    assert json.loads((tmp_path / "out" / "qc.json").read_text())["counts"]["blank_view"] == 1
    # A constant detector: the same landmarks whatever the crop shows.
    det = models["detector"]
    N = len(det.landmark_names)
    fixed = np.linspace(10, 50, 2 * N).reshape(N, 2)
    monkeypatch.setattr(det, "detect", lambda crops: (np.repeat(fixed[None], len(crops), 0),
                                                      np.full((len(crops), N), 0.9)))
    with pytest.warns(UserWarning, match="ignores its input"):
        const = register_recording(open_recording(models["recording"]), subject, det, None, opts, progress=False)
    assert set(const.status) == {"constant_detector"} and np.isnan(const.poses).all()
    assert const.qc["constant_detector_views"] == [1, 2]
    # Absurd geometry: refused before detecting.
    import fluororeg.pipeline.register as pipeline

    monkeypatch.setattr(pipeline, "detect_recording", lambda *a, **k: pytest.fail("detected despite bad geometry"))
    bad = open_recording(models["recording"])
    v = bad.geometry.views[1]
    from fluororeg.core.geometry import ConeView

    turned = ConeView(2 * v.source - v.intensifier_centre, v.source, -v.u, v.v, v.pitch_u, v.pitch_v, v.width, v.height)
    monkeypatch.setattr(bad, "geometry", dataclasses.replace(bad.geometry, views=(bad.geometry.views[0], turned)))
    with pytest.raises(ValueError, match="view 2"):
        register_recording(bad, subject, det, None, opts, progress=False)


def test_register_falls_back_from_a_translator_that_does_not_help(subject, models, tmp_path, monkeypatch, capsys):
    """A translator whose snapshot selection found a no-learning style better is not used by
    default: register says so and registers with that style; --style translate forces it."""
    import fluororeg.cli as cli
    import fluororeg.cli.common as cli_common

    monkeypatch.setattr(cli_common, "load_subject_arg", lambda folder: subject)
    verdict = {"criterion": "median refinement disagreement", "use_style": "invert", "snapshot_step": 4,
               "snapshot_score": 9.0, "baseline_scores": {"log": 12.0, "invert": 3.0}}
    x2d, _ = export_translator(snapshot_paths(models["root"] / "style")[1][1], tmp_path / "t", extra_metadata={
        "selection": verdict})
    base = ["register", str(models["recording"]), "--detector", str(models["root"] / "detector.onnx"), "--translator",
            str(x2d), "--quiet", "--allow-undertrained", "--no-refine", "--min-visible", "4"]
    assert cli.main(base + ["--out", str(tmp_path / "a")]) == 0
    assert "not translating with" in capsys.readouterr().err
    assert json.loads((tmp_path / "a" / "options.json").read_text())["style"] == "invert"
    assert cli.main(base + ["--style", "translate", "--out", str(tmp_path / "b")]) == 0
    assert "not translating" not in capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "options.json").read_text())["style"] == "translate"
