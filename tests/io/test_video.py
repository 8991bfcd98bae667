"""Video recordings (read through PyAV) and overlay videos, and the `overlay` command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from fluororeg.cli import main  # noqa: E402
from fluororeg.io.recording import ImageSequence, open_recording, write_recording_manifest  # noqa: E402
from fluororeg.simulation.simulate import default_dual_views, simulate_recording  # noqa: E402


@pytest.fixture(scope="module")
def recording(subject, tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    views = default_dual_views(width=128, height=128, pitch=2.4)
    simulate_recording(subject, out, scenario="walking", n_frames=6, views=views, seed=4)
    return out


def _write_video(frames, path, codec: str, pix_fmt: str) -> None:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        for f in frames:
            fmt = "gray16le" if f.dtype == np.uint16 else "gray"
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format=fmt)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_lossless_video_reads_exactly_in_any_order(recording, tmp_path):
    seq = ImageSequence(recording / "view1")
    frames = [seq[i].astype(np.uint8) for i in range(len(seq))]
    _write_video(frames, tmp_path / "view1.mkv", "ffv1", "gray")
    video = ImageSequence(tmp_path / "view1.mkv")
    assert len(video) == 6
    for i in (0, 1, 2, 5, 3, 3, 0):  # forward, backward (restart) and repeated reads
        got = video[i]
        assert got.dtype == np.float32 and got.shape == (128, 128)
        np.testing.assert_array_equal(got, frames[i])
    with pytest.raises(IndexError, match="frame index 6 out of range"):
        video[6]
    # 16-bit grey (high-bit-depth cameras) keeps its full range.
    deep = [(f.astype(np.uint16) * 257) for f in frames[:2]]
    _write_video(deep, tmp_path / "deep.mkv", "ffv1", "gray16le")
    np.testing.assert_array_equal(ImageSequence(tmp_path / "deep.mkv")[1], deep[1])


def test_recording_of_two_videos_registers_like_the_png_one(recording, tmp_path):
    rec = open_recording(recording)
    for k in range(2):
        _write_video([rec.sequences[k][i].astype(np.uint8) for i in range(len(rec))], tmp_path / f"v{k}.avi",
                     "ffv1", "gray")
    write_recording_manifest(tmp_path, views=("v0.avi", "v1.avi"), geometry=str(recording / "geometry.json"),
                             frames=len(rec))
    video_rec = open_recording(tmp_path)
    assert len(video_rec) == len(rec)
    assert video_rec.frame_rate_hz == 25.0 and rec.frame_rate_hz is None  # the videos' own rate; PNGs: unknown
    write_recording_manifest(tmp_path, views=("v0.avi", "v1.avi"), geometry=str(recording / "geometry.json"),
                             frames=len(rec), frame_rate_hz=120)
    assert open_recording(tmp_path).frame_rate_hz == 120.0  # recording.json's rate comes first
    for i in range(len(rec)):
        for a, b in zip(video_rec.frame(i), rec.frame(i)):
            np.testing.assert_array_equal(a, b)
    # A lossy H.264 video still gives the frames within a few grey levels.
    _write_video([rec.sequences[0][i].astype(np.uint8) for i in range(len(rec))], tmp_path / "lossy.mp4",
                 "libx264", "yuv420p")
    lossy = ImageSequence(tmp_path / "lossy.mp4")
    assert np.median(np.abs(lossy[3] - rec.sequences[0][3])) <= 3.0


def test_bad_video_files_are_refused(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        ImageSequence(tmp_path / "broken.mp4")
    Image.new("L", (8, 8)).save(tmp_path / "x.bmp")
    with pytest.raises(ValueError, match="video"):
        ImageSequence(tmp_path / "x.bmp")


def test_overlay_command_writes_pngs_and_a_video(subject, recording, tmp_path, monkeypatch, capsys):
    import fluororeg.cli.common as cli_common
    from fluororeg.core.geometry import pose_matrix
    from fluororeg.viz.overlay import LANDMARK_RGB, save_overlay_video
    from fluororeg.io.poses import write_poses_csv

    monkeypatch.setattr(cli_common, "load_subject_arg", lambda folder: subject)
    truth = np.load(recording / "truth.npz")["poses"]
    poses = truth.copy()
    poses[2] = np.nan  # a frame that was not registered
    F = len(poses)
    write_poses_csv(tmp_path / "poses.csv", np.arange(F), ["ok"] * 2 + ["too_few_landmarks"] + ["ok"] * (F - 3),
                    poses, pose_matrix(np.nan_to_num(poses)), np.ones(F), np.ones((F, 2)), np.ones((F, 2)),
                    np.full(F, 6), np.zeros(F, int))
    assert main(["overlay", str(recording), str(tmp_path / "poses.csv"), "--frames", "1", "2", "--quiet",
                 "--out", str(tmp_path / "frames_only")]) == 0  # frames picked: no video of the whole recording
    assert sorted(p.name for p in (tmp_path / "frames_only").iterdir()) == ["overlay_frame_00001.png",
                                                                           "overlay_frame_00002.png"]
    assert main(["overlay", str(recording), str(tmp_path / "poses.csv"), "--frames", "1", "2", "--quiet",
                 "--video", "overlay.mp4", "--out", str(tmp_path / "ov")]) == 0
    one = np.asarray(Image.open(tmp_path / "ov" / "overlay_frame_00001.png"))
    two = np.asarray(Image.open(tmp_path / "ov" / "overlay_frame_00002.png"))
    assert (one == LANDMARK_RGB).all(axis=-1).any() and not (two == LANDMARK_RGB).all(axis=-1).any()
    with av.open(str(tmp_path / "ov" / "overlay.mp4")) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(decoded) == F and decoded[0].shape == (128, 2 * 128 + 8, 3)
    assert main(["overlay", str(recording), str(tmp_path / "poses.csv"), "--frames", "99",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--frames 99" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"\.webm"):
        save_overlay_video([one], tmp_path / "x.webm")
    assert save_overlay_video([one, one], tmp_path / "a.gif").exists()
