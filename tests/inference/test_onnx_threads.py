"""onnxruntime sessions take the process's thread count (fluororeg.core.threads) unless told otherwise."""

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
