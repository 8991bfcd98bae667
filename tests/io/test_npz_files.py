"""Every way a file named .npz can fail to be one (empty, truncated, text, a bare .npy) is one
error naming the file, for reference poses and for volumes (io.limits.open_npz)."""

from __future__ import annotations

import numpy as np
import pytest

from fluororeg.io.poses import read_reference_poses
from fluororeg.io.volume_formats import load_volume


def bad_files(tmp_path):
    np.savez(tmp_path / "whole.npz", poses=np.zeros((3, 6)))
    whole = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "truncated.npz").write_bytes(whole[:300])
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_text("frame,theta_x_deg\n")
    with open(tmp_path / "bare.npz", "wb") as fh:
        np.save(fh, np.zeros(3))
    return {"truncated": "not a zip file", "empty": "No data left", "text": "neither a zip archive nor an .npy",
            "bare": "single .npy array"}


@pytest.mark.parametrize("read", [lambda p: read_reference_poses(p, frames=[0]), load_volume],
                         ids=["reference poses", "volume"])
def test_broken_npz_files_are_one_error_naming_them(tmp_path, read):
    for name, why in bad_files(tmp_path).items():
        path = tmp_path / f"{name}.npz"
        with pytest.raises(ValueError) as err:
            read(path)
        assert str(path) in str(err.value) and why in str(err.value), (name, str(err.value))
    np.testing.assert_array_equal(read_reference_poses(tmp_path / "whole.npz", frames=[0, 2]), np.zeros((2, 6)))
