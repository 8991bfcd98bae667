"""Training on torch's CUDA device (issue 15): the same tiny detector trained on the GPU and on
the CPU from the same seed both learn (the loss falls), reach a similar validation error, and
export ONNX models that onnxruntime runs. Skipped without a CUDA device (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fluororeg.dataset.generate import DatasetConfig, DatasetReader, generate_dataset  # noqa: E402
from fluororeg.inference.detector import LandmarkDetector  # noqa: E402
from fluororeg.training.augment import AugmentConfig  # noqa: E402
from fluororeg.training.detector_config import DetectorConfig  # noqa: E402
from fluororeg.training.detector_export import export_detector  # noqa: E402
from fluororeg.training.detector_train import train_detector  # noqa: E402

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")


@cuda_only
def test_cuda_training_learns_like_cpu_training(subject, tmp_path):
    ds = tmp_path / "ds"
    generate_dataset(subject, ds, DatasetConfig(n_train=96, n_test=16, image_size=64, pixel_mm=4.0, shard_size=48,
                                                seed=5), device="cuda", progress=False)
    cfg = DetectorConfig(arch="resnet", width=8, blocks=(1, 1, 1, 1), input_size=64, epochs=6, batch_size=16,
                         lr=3e-3, patience=100, val_fraction=0.15, augment=AugmentConfig.off(), num_threads=2)
    results = {}
    for device in ("cpu", "cuda"):
        run = tmp_path / f"run_{device}"
        res = train_detector(ds, run, cfg, progress=False, device=device)
        assert not res.interrupted
        results[device] = res
        onnx = export_detector(run, tmp_path / f"detector_{device}.onnx")
        det = LandmarkDetector(onnx, subject=subject)
        images = DatasetReader(ds, "test")[0]["image"][None]
        xy, _ = det.detect(images)
        assert np.isfinite(xy).all()
    cpu, gpu = results["cpu"], results["cuda"]
    for res in (cpu, gpu):  # both learn
        assert res.best_val_loss < 0.7 * res.history[0]["val_loss"]
    # GPU kernels are not bit-identical to CPU ones, so the two runs agree loosely.
    assert abs(np.log(gpu.best_val_loss) - np.log(cpu.best_val_loss)) < np.log(3.0)
