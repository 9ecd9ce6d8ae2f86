"""Shared fixtures. The real fundus data lives beside the checkout in ../shared/data (CI has it there
too); GLAUCOSCREEN_SHARED_DATA points elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.loopback import loopback_binds_only

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def _servers_listen_on_loopback_only():
    """A test that binds a socket to anything but 127.0.0.1 fails there (tests/loopback.py)."""
    with loopback_binds_only():
        yield


def shared_data_dir() -> Path:
    return Path(os.environ.get("GLAUCOSCREEN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not (d / "refuge-val" / "labels.csv").exists():
        pytest.fail(f"the real fundus data is missing: expected {d} (set GLAUCOSCREEN_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def refuge_photo(shared_data) -> Path:
    return shared_data / "refuge-val" / "images" / "V0001.jpg"
