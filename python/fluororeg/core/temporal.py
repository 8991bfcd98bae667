"""Temporal smoothing of a pose sequence, as labs low-pass filter kinematics.

:func:`smooth_poses` applies a zero-phase Butterworth low-pass filter (``scipy.signal.
filtfilt``) to each of the six pose components over time. Angles are unwrapped first, so a
pose crossing +-180 degrees does not jump. Frames without a pose (NaN rows) stay without a
pose: for filtering they are bridged by linear interpolation between their neighbours, and
their rows are NaN again afterwards, so smoothing never invents a registration.
"""

from __future__ import annotations

import warnings

import numpy as np

from fluororeg.core.geometry import check_array_size

__all__ = ["smooth_poses", "check_smoothing"]


def _renamed_cutoff(smoothing_hz, cutoff_hz, function: str) -> float:
    """``smoothing_hz``, or the deprecated keyword ``cutoff_hz`` (one release) with a warning."""
    if cutoff_hz is not None:
        if smoothing_hz is not None:
            raise TypeError(f"{function}() got both smoothing_hz and its deprecated name cutoff_hz: give smoothing_hz")
        warnings.warn(f"{function}(cutoff_hz=...) is deprecated: use smoothing_hz", DeprecationWarning, stacklevel=3)
        smoothing_hz = cutoff_hz
    if smoothing_hz is None:
        raise TypeError(f"{function}() missing the argument smoothing_hz (the low-pass cut-off in Hz)")
    return smoothing_hz


def check_smoothing(smoothing_hz: float | None = None, fps: float | None = None, *, order: int = 4,
                    cutoff_hz: float | None = None, n_frames: int | None = None) -> int:
    """Check the filter's settings (a clear ValueError otherwise) before any work is done;
    returns how many frames with a pose the filter needs at least. ``smoothing_hz``: the
    low-pass cut-off (Hz); ``cutoff_hz`` is its deprecated name; ``n_frames``: the recording's
    frame count, refused when fewer than that (None: not checked)."""
    smoothing_hz = _renamed_cutoff(smoothing_hz, cutoff_hz, "check_smoothing")
    if fps is None:
        raise ValueError("smoothing needs the frame rate: give fps (--fps), or frame_rate_hz in recording.json")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps = {fps!r}: expected a positive frame rate")
    if not (np.isfinite(smoothing_hz) and 0 < smoothing_hz < fps / 2):
        raise ValueError(f"smoothing_hz = {smoothing_hz!r}: expected 0 < cutoff < fps / 2 = {fps / 2}")
    if not (isinstance(order, (int, np.integer)) and 1 <= order <= 8):
        raise ValueError(f"order = {order!r}: expected an integer in 1..8")
    needed = 3 * (order + 1) + 1  # filtfilt's padding is 3 * (order + 1) samples; it needs more
    if n_frames is not None and n_frames < needed:
        raise ValueError(f"smoothing_hz needs at least {needed} frames; the recording has {n_frames}")
    return needed


def smooth_poses(poses, smoothing_hz: float | None = None, fps: float | None = None, *, order: int = 4,
                 cutoff_hz: float | None = None) -> np.ndarray:
    """Low-pass filtered poses [F, 6] (deg, mm); the cut-off ``smoothing_hz`` (Hz) must lie below
    fps / 2. ``cutoff_hz`` is its deprecated name (one release)."""
    smoothing_hz = _renamed_cutoff(smoothing_hz, cutoff_hz, "smooth_poses")
    from scipy.signal import butter, filtfilt

    check_array_size(poses, "poses")  # before the copy
    P = np.asarray(poses, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != 6:
        raise ValueError(f"poses has shape {P.shape}, expected (F, 6)")
    needed = check_smoothing(smoothing_hz, fps, order=order)
    ok = np.all(np.isfinite(P), axis=1)
    out = np.full_like(P, np.nan)
    b, a = butter(order, smoothing_hz / (fps / 2))
    if ok.sum() < needed:
        raise ValueError(f"only {int(ok.sum())} frames have a pose: filtering needs at least {needed}")
    t = np.arange(len(P))
    filled = np.empty_like(P)
    for c in range(6):
        v = P[ok, c]
        if c < 3:
            v = np.rad2deg(np.unwrap(np.deg2rad(v)))
        filled[:, c] = np.interp(t, t[ok], v)
    smooth = filtfilt(b, a, filled, axis=0)
    smooth[:, :3] = (smooth[:, :3] + 180.0) % 360.0 - 180.0
    out[ok] = smooth[ok]
    return out
