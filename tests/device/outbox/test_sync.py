"""Sync against a real Orthanc: finished visits arrive as one study per eye with their photo, disc/cup
Segmentation and report; a resend stores nothing twice; settings become a client; the service runs
once or until SIGTERM."""
from __future__ import annotations

import io
import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import requests
from pydicom import dcmread

from device.config import Config, SyncConfig
from device.lab.sync_trials import add_visits, sample_eyes
from device.outbox import sync
from device.outbox.dicom import study_uids
from device.outbox.dicomweb import DicomWebClient
from device.outbox.study import encode_item
from device.outbox.sync import SyncConfigError, client_from_config, run_sync, sync_once
from device.visits.visitlog import EYES, VisitLog, decode_masks

pytest_plugins = ["tests.orthanc"]

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 6)


@pytest.fixture
def unit(tmp_path):
    with VisitLog(tmp_path / "unit") as log:
        yield log


@pytest.fixture
def client(orthanc):
    c = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    yield c
    c.close()


def _orthanc_file(orthanc, sop_instance_uid: str):
    found = requests.post(f"{orthanc.rest}/tools/lookup", data=sop_instance_uid, auth=orthanc.auth, timeout=10).json()
    file = requests.get(f"{orthanc.rest}/instances/{found[0]['ID']}/file", auth=orthanc.auth, timeout=10)
    return dcmread(io.BytesIO(file.content))


@pytest.mark.orthanc
def test_six_visits_arrive_as_twelve_studies_of_three_instances(orthanc, client, unit, eyes):
    visits = add_visits(unit, eyes, 6, random.Random(1))
    report = sync_once(unit, client, device_id="GSE-TEST")
    assert (report.attempted, report.sent, report.failed, report.quarantined, report.stopped) == (12, 12, 0, 0, None)
    assert orthanc.studies() == sorted(study_uids(v, eye)["study"] for v in visits for eye in EYES)
    assert orthanc.instances_count() == 36
    assert unit.outbox_counts() == {"pending": 0, "sent": 12, "quarantined": 0}
    for item in unit.outbox_items():
        assert [(a["outcome"], a["response"]) for a in unit.outbox_attempts(item["id"])] == \
            [("sent", "HTTP 200: 3 instances stored")]
    # The reading centre sees the visit's patient, and the Segmentation holds exactly the masks the unit stored.
    first = unit.outbox_items()[0]
    eye = unit.outbox_eye(first["id"])
    held = client.instances(study_uids(first["visit_uuid"], first["eye"])["study"])
    assert {ds.Modality for ds in held} == {"OP", "SEG", "SR"}
    assert {ds.PatientID for ds in held} == {eye["patient"]["identifier"]}
    seg = hd.seg.Segmentation.from_dataset(_orthanc_file(orthanc, next(ds.SOPInstanceUID for ds in held if ds.Modality == "SEG")))
    disc, cup = decode_masks(unit.images.get(eye["result"]["masks_sha256"]))
    pixels = seg.pixel_array  # frames: (disc, cup) for the one photo
    assert np.array_equal(pixels[0].astype(bool), disc) and np.array_equal(pixels[1].astype(bool), cup)
    assert disc.sum() > cup.sum() > 0
    # Nothing left: a second run sends nothing and the PACS is unchanged.
    again = sync_once(unit, client, device_id="GSE-TEST")
    assert (again.attempted, again.sent) == (0, 0) and orthanc.instances_count() == 36


@pytest.mark.orthanc
def test_a_resend_after_a_crash_between_stored_and_marked_stores_nothing_twice(orthanc, client, unit, eyes):
    add_visits(unit, eyes, 1, random.Random(2))
    first = unit.outbox_pending()[0]
    files = encode_item(unit, first["id"], "GSE-TEST")
    assert client.store([dcmread(io.BytesIO(f)) for f in files]).ok  # stored, then the unit lost power
    assert orthanc.instances_count() == 3 and unit.outbox_counts()["pending"] == 2
    report = sync_once(unit, client, device_id="GSE-TEST")
    assert report.sent == 2
    assert orthanc.instances_count() == 6 and len(orthanc.studies()) == 2
    assert [a["outcome"] for a in unit.outbox_attempts(first["id"])] == ["sent"]
    assert encode_item(unit, first["id"], "GSE-TEST") == files  # the same visit always encodes to the same bytes


@pytest.mark.orthanc
def test_limit_sends_the_oldest_first(orthanc, client, unit, eyes):
    add_visits(unit, eyes, 3, random.Random(3))
    items = unit.outbox_items()
    report = sync_once(unit, client, device_id="GSE-TEST", limit=4)
    assert report.sent == 4 and report.pending == 2
    assert [i["status"] for i in unit.outbox_items()] == ["sent"] * 4 + ["pending"] * 2
    assert orthanc.studies() == sorted(study_uids(i["visit_uuid"], i["eye"])["study"] for i in items[:4])


def test_a_second_sync_at_the_same_time_stands_aside(unit, eyes):
    add_visits(unit, eyes, 1, random.Random(4))
    nobody = DicomWebClient("http://127.0.0.1:9/dicom-web", timeout=1)
    with sync._sync_lock(unit.data_dir) as held:
        assert held
        report = sync_once(unit, nobody, device_id="GSE-TEST")
    assert report.stopped == "another sync is running on this unit" and report.attempted == 0
    assert unit.outbox_counts()["pending"] == 2 and all(not unit.outbox_attempts(i["id"]) for i in unit.outbox_items())


# -- settings -> client -------------------------------------------------------------------------
def _secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


@pytest.mark.orthanc
def test_basic_auth_comes_from_the_password_file(orthanc, tmp_path, eyes):
    good = SyncConfig(url=orthanc.url, username=orthanc.username,
                      password_file=_secret_file(tmp_path, "pw", orthanc.password + "\n"))
    with VisitLog(tmp_path / "unit") as unit:
        add_visits(unit, eyes, 1, random.Random(5))
        files = encode_item(unit, unit.outbox_items()[0]["id"], "GSE-TEST")
    datasets = [dcmread(io.BytesIO(f)) for f in files]
    assert client_from_config(good).store(datasets).ok
    wrong = SyncConfig(url=orthanc.url, username=orthanc.username,
                       password_file=_secret_file(tmp_path, "wrong", "Not-The-Pa55word"))
    refused = client_from_config(wrong).store(datasets)
    assert refused.status == 401 and "Not-The-Pa55word" not in repr(refused)


class _Recorder(BaseHTTPRequestHandler):
    """A server that notes the Authorization header it was sent and accepts nothing."""

    seen: list[str] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Recorder.seen.append(self.headers.get("Authorization", ""))
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_bearer_token_comes_from_the_token_file(tmp_path, unit, eyes):
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg = SyncConfig(url="http://127.0.0.1:9/dicom-web", token_file=_secret_file(tmp_path, "token", "tok-123\n"))
        client = client_from_config(cfg, target=f"http://127.0.0.1:{server.server_address[1]}/dicom-web")
        add_visits(unit, eyes, 1, random.Random(6))
        files = encode_item(unit, unit.outbox_items()[0]["id"], "GSE-TEST")
        assert client.store([dcmread(io.BytesIO(f)) for f in files]).status == 403
        assert _Recorder.seen == ["Bearer tok-123"]
    finally:
        server.shutdown()
        server.server_close()


def test_settings_that_cannot_work_are_named(tmp_path):
    with pytest.raises(SyncConfigError, match=r"no PACS to send to.*\[sync\]"):
        client_from_config(SyncConfig())
    url = "https://pacs.example.org/dicom-web"
    with pytest.raises(SyncConfigError, match=r"token_file = .*no such file"):
        client_from_config(SyncConfig(url=url, token_file=str(tmp_path / "missing")))
    with pytest.raises(SyncConfigError, match="password_file = .* is empty"):
        client_from_config(SyncConfig(url=url, username="unit", password_file=_secret_file(tmp_path, "pw", "\n")))
    with pytest.raises(SyncConfigError, match="username and password_file go together"):
        client_from_config(SyncConfig(url=url, username="unit"))
    with pytest.raises(SyncConfigError, match="ca_file .* no such file"):
        client_from_config(SyncConfig(url=url, ca_file=str(tmp_path / "ca.pem")))
    with pytest.raises(SyncConfigError, match="token or a user name"):
        client_from_config(SyncConfig(url=url, token_file=_secret_file(tmp_path, "t", "s3cret-token"), username="u",
                                      password_file=_secret_file(tmp_path, "p", "s3cret-pw")))
    with pytest.raises(SyncConfigError, match="http:// or https://"):
        client_from_config(SyncConfig(), target="pacs.example.org")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    client = client_from_config(SyncConfig(url=url, ca_file=str(ca), timeout_s=7))
    assert (client.url, client.timeout, client._session.verify) == (url, 7, str(ca))


# -- the service --------------------------------------------------------------------------------
@pytest.mark.orthanc
def test_run_sync_once_sends_the_queue_and_reports(orthanc, tmp_path, eyes):
    cfg = Config(data_dir=tmp_path / "unit", device_id="GSE-TEST",
                 sync=SyncConfig(url=orthanc.url, username=orthanc.username,
                                 password_file=_secret_file(tmp_path, "pw", orthanc.password)))
    assert run_sync(cfg, once=True)["runs"] == 0  # no visit log yet: nothing to do, and none is created
    assert not (tmp_path / "unit" / "visits.db").exists()
    with VisitLog(cfg.data_dir) as unit:
        add_visits(unit, eyes, 2, random.Random(7))
    out = run_sync(cfg, once=True)
    assert (out["runs"], out["sent"], out["outbox"]) == (1, 4, {"pending": 0, "sent": 4, "quarantined": 0})
    assert out["last"]["sent"] == 4 and len(orthanc.studies()) == 4
    with pytest.raises(SyncConfigError, match="no PACS"):
        run_sync(Config(data_dir=tmp_path / "unit", sync=SyncConfig()), once=True)


_SERVICE = """
import json, sys
from pathlib import Path
from device.config import Config, SyncConfig
from device.outbox.sync import run_sync
a = json.loads(sys.argv[1])
cfg = Config(data_dir=Path(a["data_dir"]), device_id="GSE-TEST",
             sync=SyncConfig(url=a["url"], username=a["username"], password_file=a["password_file"], interval_s=60))
print("RESULT " + json.dumps(run_sync(cfg, once=False)), flush=True)
"""


@pytest.mark.orthanc
def test_the_service_loops_until_sigterm_and_logs_for_journald(orthanc, tmp_path, eyes):
    with VisitLog(tmp_path / "unit") as unit:
        add_visits(unit, eyes, 1, random.Random(8))
    args = {"data_dir": str(tmp_path / "unit"), "url": orthanc.url, "username": orthanc.username,
            "password_file": _secret_file(tmp_path, "pw", orthanc.password)}
    env = {"PATH": "/usr/bin:/bin", "JOURNAL_STREAM": "8:12345"}
    service = subprocess.Popen([sys.executable, "-c", _SERVICE, json.dumps(args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            lines.append(service.stdout.readline())
            if "sync to " in lines[-1]:  # the first run is done; the service now waits for the next
                break
        assert "sync to " in lines[-1], "".join(lines)
        time.sleep(0.3)
        assert service.poll() is None
        service.send_signal(signal.SIGTERM)
        rest, _ = service.communicate(timeout=20)
    finally:
        if service.poll() is None:
            service.kill()
    lines += rest.splitlines(keepends=True)
    assert service.returncode == 0, "".join(lines)
    result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert (result["runs"], result["sent"], result["outbox"]["sent"]) == (1, 2, 2)
    log_lines = [line for line in lines if not line.startswith("RESULT ")]
    assert all(line.startswith(("<6>", "<4>", "<3>")) for line in log_lines), log_lines  # journald priorities
    assert any("SIGTERM" in line for line in log_lines)
    assert orthanc.password not in "".join(lines)


# -- systemd and NetworkManager -----------------------------------------------------------------
@pytest.mark.parametrize("interface, action, connectivity, starts", [
    ("wlan0", "up", "", True), ("eth0", "vpn-up", "", True), ("wlan0", "connectivity-change", "FULL", True),
    ("wlan0", "connectivity-change", "LIMITED", False), ("wlan0", "down", "", False), ("lo", "up", "", False),
])
def test_the_dispatcher_starts_a_sync_when_a_network_comes_up(tmp_path, interface, action, connectivity, starts):
    """The script runs under sh as NetworkManager runs it; `systemctl` is a stand-in that notes its arguments."""
    calls = tmp_path / "calls"
    (tmp_path / "systemctl").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (tmp_path / "systemctl").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CONNECTIVITY_STATE": connectivity}
    script = REPO / "systemd" / "90-glaucoscreen-sync"
    assert script.stat().st_mode & 0o111  # NetworkManager runs only executable scripts
    done = subprocess.run(["sh", str(script), interface, action], env=env, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert (calls.read_text() if calls.exists() else "") == ("--no-block start glaucoscreen-sync.service\n" if starts else "")


def test_the_timer_and_its_service_are_valid_units(tmp_path):
    """systemd-analyze checks the pair as installed (the service's binary and user pointed at ones that exist here)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is needed to check the units (Debian package systemd)"
    service = (REPO / "systemd" / "glaucoscreen-sync.service").read_text()
    assert "Type=oneshot" in service and "ExecStart=/opt/glaucoscreen/venv/bin/glaucoscreen sync --once" in service
    service = service.replace("/opt/glaucoscreen/venv/bin/glaucoscreen", shutil.which("true"))
    (tmp_path / "glaucoscreen-sync.service").write_text(service.replace("=glaucoscreen\n", "=root\n"))
    timer = (REPO / "systemd" / "glaucoscreen-sync.timer").read_text()
    assert "OnCalendar=*:0/5" in timer and "Persistent=true" in timer
    (tmp_path / "glaucoscreen-sync.timer").write_text(timer)
    done = subprocess.run([analyze, "verify", str(tmp_path / "glaucoscreen-sync.timer"),
                           str(tmp_path / "glaucoscreen-sync.service")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Unknown" not in done.stderr, done.stderr
