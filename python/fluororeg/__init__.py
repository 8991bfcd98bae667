"""fluororeg: automatic registration of a CT bone model to dual-fluoroscope X-ray recordings.

The compiled core (``fluororeg._core``) is private; use the functions exported here. Units in
the public API are millimetres and degrees (see DESIGN.md for all conventions).
"""

from __future__ import annotations

from . import _core
from .geometry import (
    ConeView,
    ParallelCamera,
    euler_from_matrix,
    pose_from_matrix,
    pose_matrix,
    rotation_matrix,
    system_centre,
)
from .registration import (
    BatchResult,
    RegistrationResult,
    mean_landmark_distance,
    pose_errors,
    register_frame,
    register_frames,
)

__version__ = "0.1.0"


def has_cuda() -> bool:
    """True when the CUDA backend was compiled in and a CUDA device is usable."""
    return bool(_core.cuda_available())


def cuda_built() -> bool:
    """True when the CUDA backend was compiled in (a device may still be missing)."""
    return bool(_core.cuda_built())


__all__ = [
    "BatchResult",
    "ConeView",
    "RegistrationResult",
    "mean_landmark_distance",
    "pose_errors",
    "register_frame",
    "register_frames",
    "ParallelCamera",
    "cuda_built",
    "euler_from_matrix",
    "has_cuda",
    "pose_from_matrix",
    "pose_matrix",
    "rotation_matrix",
    "system_centre",
]
