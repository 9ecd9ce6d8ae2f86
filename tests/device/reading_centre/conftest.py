"""Fixtures of the reading centre's tests: sample eyes, the unit's PACS settings for the test Orthanc, and
Chromium for the browser test (the kiosk's browser tests' own fixture)."""
from __future__ import annotations

import pytest

from device.config import SyncConfig
from device.lab.sync_trials import sample_eyes
from tests.device.kiosk.test_kiosk_browser import page  # noqa: F401 - the fixture, shared with the kiosk's browser tests


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


@pytest.fixture
def pacs_config(tmp_path, orthanc):
    """The unit's [sync] settings for the test Orthanc, its password in a file as on a unit."""
    secret = tmp_path / "pacs-password"
    secret.write_text(orthanc.password)
    secret.chmod(0o600)
    return SyncConfig(url=orthanc.url, username=orthanc.username, password_file=str(secret), timeout_s=10)
