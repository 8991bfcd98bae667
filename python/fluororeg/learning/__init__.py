"""Learning: the landmark detector and the X-ray-to-DRR style translator.

Training needs torch (the optional ``train`` extra: ``pip install torch==2.13.0``); inference
needs only onnxruntime (:mod:`fluororeg.learning.inference`). Shared training machinery
(checkpoints, resume, logs, loss plots, graceful Ctrl-C) lives in :mod:`.common`; ONNX export
with the metadata inference needs in :mod:`.export`.
"""
