"""Shared fixtures: the real headsq CT, a small subject on it, and dual-fluoroscope views (analytic
phantoms: phantoms.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fluororeg.subject.example import headsq_path
from fluororeg.core.geometry import ConeView
from fluororeg.core.volume import Volume
from fluororeg.io.volume_formats import load_volume


@pytest.fixture(scope="session")
def headsq_mu() -> Volume:
    p = headsq_path()
    if p is None:
        pytest.skip("../shared/data/headsq is not available")
    v = load_volume(p)
    return v.translated(-v.center).hu_to_attenuation()


@pytest.fixture(scope="session")
def dual_views() -> tuple[ConeView, ConeView]:
    """Two fluoroscopes about 100 degrees apart, sources ~1 m from the intensifiers."""
    views = []
    for ang in (-50.0, 50.0):
        a = np.deg2rad(ang)
        src = 650.0 * np.array([np.sin(a), -np.cos(a), 0.0])
        views.append(ConeView.looking_at(src, [0, 0, 0], distance_to_intensifier=1050.0, pitch=1.2,
                                         width=96, height=96))
    return tuple(views)


@pytest.fixture(scope="session")
def subject():
    """A small real subject: the headsq CT with six extreme bone points (one left/right pair)."""
    from fluororeg.simulation.subjects import extreme_points_subject

    p = headsq_path()
    if p is None:
        pytest.skip("../shared/data/headsq is not available")
    return extreme_points_subject(load_volume(p))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long tests, skipped unless FLUORO_RUN_SLOW=1 or -m slow")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("FLUORO_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set FLUORO_RUN_SLOW=1 (or -m slow) to run it")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)
