"""onnxruntime sessions take the process's thread count (fluororeg.core.threads) unless told otherwise,
and their idle threads do not spin."""

from fluororeg.core import threads
from fluororeg.inference.onnx_model import OnnxModel


def test_sessions_use_the_process_thread_count(tmp_path, onnx_builders):
    path = onnx_builders.spot_detector(tmp_path / "d.onnx", 32, ["a", "b"])
    try:
        threads.set_num_threads(1)
        assert OnnxModel(path, device="cpu").session.get_session_options().intra_op_num_threads == 1
        assert OnnxModel(path, device="cpu", num_threads=2).session.get_session_options().intra_op_num_threads == 2
    finally:
        threads.set_num_threads(0)
    default = OnnxModel(path, device="cpu").session.get_session_options().intra_op_num_threads
    assert default == threads.num_threads()


def test_idle_session_threads_sleep(tmp_path, onnx_builders):
    """The pipeline runs detections beside other work: spinning pool threads would take its cores."""
    path = onnx_builders.spot_detector(tmp_path / "d.onnx", 32, ["a", "b"])
    options = OnnxModel(path, device="cpu").session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
