"""fluororeg: automatic registration of a CT bone model to dual-fluoroscope X-ray recordings.

The compiled core (``fluororeg._core``) is private; use the functions exported here and the
modules ``fluororeg.core.volume``, ``.geometry``, ``.render``, ``.subject``, ``.landmarks``,
``.dataset`` and ``.registration``. Units in the public API are millimetres and degrees (see
DESIGN.md for all conventions).
"""

from __future__ import annotations

import os as _os

__version__ = "0.1.0"

# Idle OpenMP threads sleep instead of spinning (torch's libgomp reads this when torch loads, so
# it applies when fluororeg is imported first, as the CLI does): beside other jobs, spinning
# threads cut 2-thread style training on 2 cores from 1.19 to 0.11 steps/s
# (benchmarks/bench_threads.py). A value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fluororeg import _core
from fluororeg.core.geometry import (
    ConeView,
    ParallelCamera,
    euler_from_matrix,
    pose_from_matrix,
    pose_matrix,
    rotation_matrix,
    system_centre,
    beam_crossing,
)
from fluororeg.subject.landmarks import Landmarks, load_landmarks, save_landmarks
from fluororeg.core.registration import (
    BatchResult,
    RegistrationOptions,
    RegistrationResult,
    RegistrationStatus,
    mean_landmark_distance,
    pose_errors,
    register_frame,
    register_frames,
    check_view_agreement,
)
from fluororeg.core.render import (
    project_cone,
    project_mask_cone,
    project_mask_parallel,
    project_parallel,
    render_cone,
    render_parallel,
    to_uint8,
)
from fluororeg.subject.proposal import propose_landmarks
from fluororeg.subject.subject import Subject, example_subject, load_subject, make_subject, save_subject
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume, save_volume


def has_cuda() -> bool:
    """True when the CUDA backend was compiled in and a CUDA device is usable."""
    return bool(_core.cuda_available())


def cuda_built() -> bool:
    """True when the CUDA backend was compiled in (a device may still be missing)."""
    return bool(_core.cuda_built())


__all__ = [
    "BatchResult",
    "ConeView",
    "Landmarks",
    "ParallelCamera",
    "RegistrationResult",
    "Subject",
    "Volume",
    "cuda_built",
    "euler_from_matrix",
    "example_subject",
    "has_cuda",
    "load_landmarks",
    "load_subject",
    "load_volume",
    "make_subject",
    "mean_landmark_distance",
    "pose_errors",
    "pose_from_matrix",
    "pose_matrix",
    "project_cone",
    "project_mask_cone",
    "project_mask_parallel",
    "project_parallel",
    "propose_landmarks",
    "RegistrationOptions",
    "RegistrationStatus",
    "register_frame",
    "register_frames",
    "check_view_agreement",
    "render_cone",
    "render_parallel",
    "rotation_matrix",
    "save_landmarks",
    "save_subject",
    "save_volume",
    "system_centre",
    "beam_crossing",
    "to_uint8",
]
