"""The sending page tells an admin where results go, how the last attempt went in words, who is waiting
(by name and clinic number, not a visit UUID), and sends at once on "Send now", against a real Orthanc;
the home page's counts agree with it."""
from __future__ import annotations

import random
import re
import time

import pytest

from device.config import Config, SyncConfig
from device.kiosk import create_app
from device.lab.sync_trials import add_visits, sample_eyes
from device.unit import Unit
from tests.device.kiosk.test_kiosk import PIN, add_workers, csrf_of, sign_in

pytest_plugins = ["tests.orthanc"]


def _unit(tmp_path, sync: SyncConfig) -> Unit:
    u = Unit.from_config(Config(data_dir=tmp_path / "unit", device_id="test-unit", simulate=True, sync=sync))
    add_workers(u)
    return u


def _text(page: str, element_id: str) -> str:
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:dd|ul|p)>', page, re.S)
    assert m, element_id
    return " ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split())


@pytest.mark.orthanc
def test_send_now_sends_the_waiting_results_and_the_page_says_how_it_went(orthanc, tmp_path, shared_data):
    password = tmp_path / "pw"
    password.write_text(orthanc.password)
    unit = _unit(tmp_path, SyncConfig(url=orthanc.url, username=orthanc.username, password_file=str(password)))
    try:
        [visit] = add_visits(unit.visits, sample_eyes(shared_data, 2), 1, random.Random(3))
        patient = unit.visits.get_visit(visit)["patient"]
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        assert sign_in(client, "amina", PIN).status_code == 302
        page = client.get("/admin/sync").text
        assert orthanc.url in _text(page, "pacs-address") and orthanc.password not in page
        assert _text(page, "last-attempt") == "none yet"
        waiting = _text(page, "waiting-list")
        assert patient["identifier"] in waiting and patient["name"] in waiting and visit not in waiting
        assert _text(page, "count-waiting") == "2"
        home = client.get("/").text
        assert "2 results waiting to send" in " ".join(home.split())
        reply = client.post("/admin/sync/send", data={"csrf_token": csrf_of(page)}, follow_redirects=True)
        assert "Sending 2 results now." in reply.text
        deadline = time.monotonic() + 60
        while unit.visits.outbox_counts()["sent"] < 2:
            assert time.monotonic() < deadline, "Send now sent nothing within a minute"
            time.sleep(0.2)
        while "send-now-result" not in (page := client.get("/admin/sync").text):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _text(page, "send-now-result") == "2 sent, 0 to try again, 0 refused"
        assert _text(page, "last-attempt").endswith(": sent") and _text(page, "count-sent") == "2"
        assert "All 2 eye results sent" in " ".join(client.get("/").text.split())
        assert len(orthanc.studies()) == 2
    finally:
        unit.close()


def test_without_a_pacs_the_page_says_so_and_send_now_explains(tmp_path):
    unit = _unit(tmp_path, SyncConfig())
    try:
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        assert sign_in(client, "amina", PIN).status_code == 302
        page = client.get("/admin/sync").text
        assert "No PACS address is set" in _text(page, "pacs-address")
        reply = client.post("/admin/sync/send", data={"csrf_token": csrf_of(page)}, follow_redirects=True)
        assert "nothing can be sent" in reply.text
    finally:
        unit.close()


def test_a_pacs_that_cannot_be_reached_is_shown_in_words_as_the_last_attempt(tmp_path, shared_data):
    unit = _unit(tmp_path, SyncConfig(url="http://127.0.0.1:9/dicom-web", timeout_s=2, deadline_s=5))  # nothing listens
    try:
        add_visits(unit.visits, sample_eyes(shared_data, 2), 1, random.Random(4))
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        assert sign_in(client, "amina", PIN).status_code == 302
        page = client.get("/admin/sync").text
        client.post("/admin/sync/send", data={"csrf_token": csrf_of(page)})
        deadline = time.monotonic() + 60
        while "send-now-result" not in (page := client.get("/admin/sync").text):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        last = _text(page, "last-attempt")
        assert "not sent:" in last and len(last) > len("not sent: ") + 20  # the error in words
        assert _text(page, "count-waiting") == "2"
    finally:
        unit.close()
