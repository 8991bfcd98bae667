"""Style translator training: CycleGAN networks and losses, short real trainings on CPU,
resume, ONNX export (torch == onnxruntime). The X-ray crops: tests/training/test_xray_crops.py
and tests/inference/test_crops.py; the translator alone: tests/inference/test_style_translator.py."""

from __future__ import annotations

import os
import shutil
import signal
import threading

import numpy as np
import pytest


SIZE = 32  # training tests run on 32 x 32 crops with width-8 networks


def tiny_config(**kw):
    from fluororeg.training.translator_config import TranslatorConfig

    base = dict(image_size=SIZE, gen_width=8, gen_blocks=2, disc_width=8, disc_layers=2, batch_size=2, lr=1e-3,
                steps=40, log_every=5, checkpoint_every=20, seed=0)
    return TranslatorConfig(**{**base, **kw})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks train far faster on one thread, above all on a busy 2-core machine."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def recording(subject, tmp_path_factory):
    from fluororeg.simulation.simulate import default_dual_views, simulate_recording

    out = tmp_path_factory.mktemp("xray") / "rec"
    return simulate_recording(subject, out, n_frames=4, views=default_dual_views(128, 128, 2.4), seed=1)


@pytest.fixture(scope="module")
def drr_root(subject, tmp_path_factory):
    from fluororeg.dataset.generate import DatasetConfig, generate_dataset

    root = tmp_path_factory.mktemp("drr") / "ds"
    generate_dataset(subject, root, DatasetConfig(n_train=24, n_test=2, image_size=SIZE, pixel_mm=8.0, shard_size=16,
                                                  seed=2), progress=False)
    return root


@pytest.fixture(scope="module")
def trained_run(recording, drr_root, tmp_path_factory):
    pytest.importorskip("torch")
    from fluororeg.training.translator_train import train_translator

    run = tmp_path_factory.mktemp("style") / "run"
    summary = train_translator(recording, drr_root, run, tiny_config(), progress=False)
    return run, summary


# -------------------------------------------------------------------------------- networks, losses

def test_networks_follow_cyclegan():
    torch = pytest.importorskip("torch")
    from fluororeg.training.translator_networks import PatchDiscriminator, ResnetGenerator

    g = ResnetGenerator()  # paper: width 64, 6 blocks
    n = sum(p.numel() for p in g.parameters())
    assert 7.7e6 < n < 7.9e6  # CycleGAN resnet_6blocks with one channel in and out
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in g.modules()) == 1 + 2 + 2 * 6 + 2
    assert sum(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules()) == 2 + 2 * 6
    d = PatchDiscriminator()
    with torch.no_grad():
        assert d(torch.zeros(1, 1, 128, 128)).shape == (1, 1, 14, 14)  # 70 x 70 patches
        y = ResnetGenerator(8, 2)(torch.randn(3, 1, SIZE, SIZE) * 3)
    assert y.shape == (3, 1, SIZE, SIZE) and y.abs().max() <= 1


def test_content_preserving_loss():
    torch = pytest.importorskip("torch")
    from fluororeg.training.translator_losses import content_loss

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(2, 1, 36, 36, generator=g), 5, 1)  # smooth structure
    d = torch.nn.functional.avg_pool2d(torch.randn(2, 1, 36, 36, generator=g), 5, 1)
    # identity "generators" on shared images: 0 with matching polarity
    loss, pxd, pdx = content_loss(x, x, d, d, xray_polarity=1)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and pxd.item() == pytest.approx(1.0, abs=1e-6)
    # with X-ray polarity -1 a contrast-inverting translation preserves content: 0
    assert content_loss(x, -x, d, -d, xray_polarity=-1)[0].item() == pytest.approx(0.0, abs=1e-6)
    # ... and brightness/contrast changes do not matter
    assert content_loss(x, 0.3 - 0.5 * x, d, 2 * -d + 0.1)[0].item() == pytest.approx(0.0, abs=1e-5)
    # unrelated fakes: about 1; the opposite polarity: 2
    assert content_loss(x, d, d, x)[0].item() == pytest.approx(1.0, abs=0.15)
    assert content_loss(x, x, d, d, xray_polarity=-1)[0].item() == pytest.approx(2.0, abs=1e-5)


def test_image_pool():
    torch = pytest.importorskip("torch")
    from fluororeg.training.translator_losses import ImagePool

    rng = np.random.default_rng(0)
    pool = ImagePool(3)
    for k in range(3):
        out = pool.query(torch.full((1, 1, 4, 4), float(k)), rng)
        assert out[0, 0, 0, 0].item() == k  # filling: returns the new fake
    outs = [pool.query(torch.full((1, 1, 4, 4), 10.0 + k), rng)[0, 0, 0, 0].item() for k in range(40)]
    assert len(pool.images) == 3
    assert any(v < 10 for v in outs) and any(v >= 10 for v in outs)  # old and new fakes both come back
    assert ImagePool(0).query(torch.ones(2, 1, 4, 4), rng).shape == (2, 1, 4, 4)


def test_config_presets_and_schedule():
    pytest.importorskip("torch")
    from fluororeg.training.translator_config import TranslatorConfig

    paper = TranslatorConfig.preset("paper")
    assert (paper.image_size, paper.gen_width, paper.gen_blocks, paper.batch_size, paper.lr) == (128, 64, 6, 1, 2e-4)
    assert (paper.beta1, paper.beta2, paper.lambda_cycle, paper.pool_size) == (0.5, 0.999, 10.0, 50)
    fast = TranslatorConfig.preset("fast", steps=100)
    assert fast.gen_width == 32 and fast.steps == 100
    assert paper.total_steps(6525, 6716) == 200 * 6716
    lrs = [fast.lr_at(s, 100) for s in range(100)]
    assert lrs[0] == lrs[49] == fast.lr and lrs[50] < fast.lr and 0 < lrs[99] < 0.03 * fast.lr
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    for bad in (dict(image_size=30), dict(gen_width=0), dict(lr=0.0), dict(xray_polarity=0), dict(steps=0),
                dict(beta1=1.0), dict(lambda_cp=float("nan")), dict(ema_decay=1.0), dict(ema_decay=-0.1),
                dict(snapshot_every=-1)):
        with pytest.raises(ValueError):
            TranslatorConfig(**bad)
    with pytest.raises(ValueError, match="preset"):
        TranslatorConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown"):
        TranslatorConfig.preset("fast", width=3)


# -------------------------------------------------------------------------------------- training

def test_short_training_lowers_the_losses(trained_run):
    from fluororeg.training.common import TrainLog

    run, summary = trained_run
    assert summary["step"] == summary["total_steps"] == 40 and not summary["stopped"]
    rows = TrainLog(run).rows()
    assert [int(r["step"]) for r in rows] == list(range(5, 41, 5))
    first, last = rows[0], rows[-1]
    assert float(last["cycle"]) < 0.6 * float(first["cycle"])
    assert float(last["loss_G"]) < 0.6 * float(first["loss_G"])
    assert float(last["content"]) < float(first["content"])
    assert float(last["phi_xray_to_drr"]) > 0.3  # the X-ray -> DRR fake keeps the (inverted) structure
    for name in ("checkpoint_last.pt", "log.csv", "losses.png", "samples.png"):
        assert (run / name).is_file()


def test_resume_continues_the_step_count(trained_run, recording, drr_root, tmp_path):
    from fluororeg.training.common import TrainLog, load_checkpoint
    from fluororeg.training.translator_train import discard_run, train_translator

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    summary = train_translator(recording, drr_root, run, tiny_config(steps=60), max_steps=5, progress=False)
    assert summary["step"] == 45 and summary["total_steps"] == 60
    assert load_checkpoint(run / "checkpoint_last.pt")["step"] == 45
    steps = [int(r["step"]) for r in TrainLog(run).rows()]
    assert steps[-2:] == [40, 45]
    # rows logged after the last checkpoint (a crash in between) are dropped on resume
    with (run / "log.csv").open("a") as f:
        f.write("50,9,0.1,1,1,1,1,1,1,1,1\n")
    train_translator(recording, drr_root, run, tiny_config(steps=60), max_steps=5, progress=False)
    steps = [int(r["step"]) for r in TrainLog(run).rows()]
    assert steps[-3:] == [40, 45, 50] and len(steps) == len(set(steps))
    with pytest.raises(FileExistsError, match="resume=True"):
        train_translator(recording, drr_root, run, tiny_config(), resume=False, progress=False)
    # discard_run (the command's --restart) clears the run: it starts over from step 0.
    discard_run(run)
    assert not (run / "checkpoint_last.pt").exists() and not (run / "log.csv").exists()
    fresh = train_translator(recording, drr_root, run, tiny_config(steps=60), resume=False, max_steps=5, progress=False)
    assert fresh["step"] == 5 and [int(r["step"]) for r in TrainLog(run).rows()][-1] == 5
    with pytest.raises(ValueError, match="architecture differs"):
        train_translator(recording, drr_root, run, tiny_config(gen_width=4), progress=False)


def test_averaged_generators_and_snapshots(recording, drr_root, tmp_path):
    """ema_decay: after the first step the average is 0.1 * initial + 0.9 * trained weights
    (the warm-up decay min(d, 1/10)); it is what snapshots, export and resume use."""
    import torch

    from fluororeg.training.common import load_checkpoint
    from fluororeg.training.translator_export import load_translator
    from fluororeg.training.translator_networks import build_networks
    from fluororeg.training.translator_train import train_translator

    cfg = tiny_config(steps=4, ema_decay=0.99, snapshot_every=2, checkpoint_every=1)
    run = tmp_path / "run"
    train_translator(recording, drr_root, run, cfg, max_steps=1, progress=False)
    torch.manual_seed(cfg.seed)
    initial = build_networks(cfg)["G_xd"].state_dict()
    saved = load_checkpoint(run / "checkpoint_last.pt")
    raw, avg = saved["nets"]["G_xd"], saved["ema"]["G_xd"]
    for name in initial:
        torch.testing.assert_close(avg[name], 0.1 * initial[name] + 0.9 * raw[name])
    assert any(not torch.equal(avg[n], raw[n]) for n in initial)
    train_translator(recording, drr_root, run, cfg, progress=False)  # resumes the average too
    saved = load_checkpoint(run / "checkpoint_last.pt")
    gens, _, _ = load_translator(run)
    for name, value in gens["xray_to_drr"].state_dict().items():
        assert torch.equal(value, saved["ema"]["G_xd"][name])
    snaps = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snaps == ["step_000002.pt", "step_000004.pt"]
    last = load_checkpoint(run / "snapshots" / "step_000004.pt")
    assert last["step"] == 4 and set(last["nets"]) == {"G_xd", "G_dx"}
    for name, value in last["nets"]["G_dx"].items():
        assert torch.equal(value, saved["ema"]["G_dx"][name])
    snap_gens, _, _ = load_translator(run / "snapshots" / "step_000002.pt")
    assert snap_gens["xray_to_drr"].width == cfg.gen_width


def test_ctrl_c_stops_after_the_step_and_saves(recording, drr_root, tmp_path):
    from fluororeg.training.common import load_checkpoint
    from fluororeg.training.translator_train import train_translator
    from fluororeg.training.xray_crops import xray_training_crops

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    crops = xray_training_crops(recording, SIZE, 8.0)
    run = tmp_path / "run"
    done = threading.Event()

    def interrupt_after_the_first_log_row():  # no timing: wait until training is under way
        while not done.is_set():
            if (run / "log.csv").exists():
                os.kill(os.getpid(), signal.SIGINT)
                return
            done.wait(0.02)

    thread = threading.Thread(target=interrupt_after_the_first_log_row, daemon=True)
    thread.start()
    try:
        summary = train_translator(crops, drr_root, run, tiny_config(steps=100000, log_every=1), progress=False)
    finally:
        done.set()
        thread.join()
    assert summary["stopped"] and 0 < summary["step"] < 100000
    assert load_checkpoint(run / "checkpoint_last.pt")["step"] == summary["step"]


def test_training_input_errors(recording, drr_root, tmp_path):
    pytest.importorskip("torch")
    from fluororeg.training.translator_train import train_translator

    with pytest.raises(ValueError, match="image_size"):
        train_translator(recording, drr_root, tmp_path / "a", tiny_config(image_size=64), progress=False)
    with pytest.raises(ValueError, match="uint8"):
        train_translator(recording, np.zeros((4, SIZE, SIZE), np.float32), tmp_path / "b", tiny_config(), progress=False)
    with pytest.raises(TypeError, match="TranslatorConfig"):
        train_translator(recording, drr_root, tmp_path / "c", {"steps": 3}, progress=False)
    with pytest.raises(ValueError, match="num_threads"):
        train_translator(recording, drr_root, tmp_path / "d", tiny_config(), progress=False, num_threads=0)


# ------------------------------------------------------------------------------- export, inference

def test_export_matches_torch_and_translator_runs(trained_run, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from fluororeg.inference.onnx_model import OnnxModel
    from fluororeg.inference.translator import INPUT_NORMALISATION, StyleTranslator
    from fluororeg.training.translator_export import export_translator, load_translator

    run, _ = trained_run
    x2d, d2x = export_translator(run, tmp_path / "onnx")
    assert (x2d.name, d2x.name) == ("xray_to_drr.onnx", "drr_to_xray.onnx")
    gens, _, _ = load_translator(run / "checkpoint_last.pt")
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, SIZE, SIZE)).astype(np.float32)
    for path, direction in ((x2d, "xray_to_drr"), (d2x, "drr_to_xray")):
        model = OnnxModel(path, kind="style_generator", device="cpu", num_threads=1)
        assert model.meta["direction"] == direction and model.input_size == (SIZE, SIZE)
        assert model.meta["input_normalisation"] == INPUT_NORMALISATION and model.meta["training_step"] == 40
        got = model.run(x)["translated"]
        with torch.no_grad():
            ref = gens[direction](torch.from_numpy(x)).numpy()
        assert np.abs(got - ref).max() < 1e-4
    tr = StyleTranslator(x2d, device="cpu", num_threads=1, direction="xray_to_drr", batch_size=2)
    imgs = np.random.default_rng(1).integers(0, 256, (5, SIZE, SIZE)).astype(np.uint8)
    out = tr.translate(imgs)
    assert out.shape == imgs.shape and out.dtype == np.uint8
    with torch.no_grad():
        ref = gens["xray_to_drr"](torch.from_numpy(imgs[:, None] / 127.5 - 1.0).float()).numpy()[:, 0]
    assert np.abs(out.astype(int) - np.clip(np.round((ref + 1) * 127.5), 0, 255)).max() <= 1
    np.testing.assert_array_equal(tr.translate(imgs[0]), out[0])
    np.testing.assert_array_equal(tr.translate(imgs.astype(np.float32)), out)
