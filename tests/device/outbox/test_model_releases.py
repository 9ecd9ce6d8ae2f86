"""Models over the network and the unit's health in the sync stream, against real HTTP servers on 127.0.0.1:
the sync service finds a newer signed release in [models] release_url and installs it as the command would,
refuses a bad one once (and does not fetch it again at every run), and POSTs its health report to
[sync] health_url, with the PACS's credentials only where the address is the PACS's own server."""
from __future__ import annotations

import datetime as dt
import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from device.cli import main
from device.config import SyncConfig
from device.lab.sync_trials import add_visits, sample_eyes
from device.outbox import health
from device.outbox.sync import run_sync
from device.outbox.usb import export
from device.screening import model_update
from device.visits.datadir import DataDir
from device.visits.visitlog import VisitLog
from models.runtime import registry
from models.runtime.installed import ModelStore, active_artifacts
from tests.device.screening.model_bundles import release  # noqa: F401 - a fixture


class Programme:
    """A programme's server: files to GET (path -> bytes, or an HTTP status), and every request it was sent."""

    def __init__(self) -> None:
        self.files: dict[str, bytes | int] = {}
        self.requests: list[dict] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                owner.requests.append({"method": "GET", "path": self.path, "authorization": self.headers.get("Authorization")})
                found = owner.files.get(self.path, 404)
                self._answer(found, b"") if isinstance(found, int) else self._answer(200, found)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests.append({"method": "POST", "path": self.path, "authorization": self.headers.get("Authorization"),
                                       "type": self.headers.get("Content-Type"), "body": body})
                found = owner.files.get(self.path, 204)
                self._answer(found if isinstance(found, int) else 200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sent(self, method: str, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


@pytest.fixture
def programme():
    p = Programme()
    yield p
    p.close()


@pytest.fixture
def elsewhere():
    p = Programme()
    yield p
    p.close()


def unit_config(release, tmp_path: Path, programme: Programme, **sync):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    cfg = release.config(tmp_path / "unit", sync=SyncConfig(url=f"{programme.url}/dicom-web", token_file=str(token), **sync))
    cfg.models.release_url = f"{programme.url}/releases/index.json"
    return cfg


def test_the_sync_service_installs_a_newer_signed_release_and_sends_its_health(release, tmp_path, programme):
    bundle = release.bundle("net-0.2.0.tar", "0.2.0")
    programme.files["/releases/index.json"] = json.dumps({"version": "0.2.0", "url": "glaucoscreen-models-0.2.0.tar"}).encode()
    programme.files["/releases/glaucoscreen-models-0.2.0.tar"] = bundle.read_bytes()
    cfg = unit_config(release, tmp_path, programme, health_url=f"{programme.url}/fleet/health")

    out = run_sync(cfg, once=True)  # a new unit: no visit log yet, and still the check and the report
    assert out["models"]["outcome"] == "installed" and (out["models"]["active"], out["models"]["previous"]) == ("0.2.0", "0.1.0")
    assert ModelStore(DataDir(cfg.data_dir).models).active_version() == "0.2.0"
    assert registry.versions(active_artifacts(DataDir(cfg.data_dir).models)) == registry.versions(release.newer)
    assert not list(DataDir(cfg.data_dir).models.glob("download-*")), "the downloaded bundle is not kept"

    assert out["health"] == "sent"
    (posted,) = programme.sent("POST", "/fleet/health")
    assert posted["type"] == "application/json" and posted["authorization"] == "Bearer s3cret-token"  # the PACS's own server
    report = json.loads(posted["body"])
    assert report["device_id"] == "test-unit" and report["models"]["release"] == "0.2.0" and report["models"]["ok"] is True
    assert report["models"]["versions"] == registry.versions(release.newer)
    assert report["queue"] == {"pending": 0, "sent": 0, "quarantined": 0} and report["calibration"] is None
    assert report["model_update"]["outcome"] == "installed" and report["disk"]["free_bytes"] > 0
    assert report["software"]["version"] == "0.1.0" and report["uptime_s"] > 0 and report["light_dose_totals"] is None

    VisitLog(cfg.data_dir).close()  # the unit has a visit log now: the check runs after each sending pass
    again = run_sync(cfg, once=True)
    assert again["runs"] == 1 and again["models"]["outcome"] == "up to date" and again["health"] == "sent"
    assert len(programme.sent("GET", "/releases/glaucoscreen-models-0.2.0.tar")) == 1, "an installed release is not fetched again"


def test_a_refused_release_is_said_once_and_not_fetched_at_every_run(release, tmp_path, programme):
    stranger = release.bundle("net-stranger.tar", "0.2.0", key=release.stranger_key)
    programme.files["/releases/index.json"] = json.dumps({"version": "0.2.0", "url": "/releases/b.tar"}).encode()
    programme.files["/releases/b.tar"] = stranger.read_bytes()
    cfg = unit_config(release, tmp_path, programme)

    first = run_sync(cfg, once=True)["models"]
    assert first["outcome"] == "refused" and "a key this unit does not trust" in first["error"]
    second = run_sync(cfg, once=True)["models"]
    assert second["outcome"] == "refused before" and "a key this unit does not trust" in second["error"]
    assert len(programme.sent("GET", "/releases/b.tar")) == 1
    assert ModelStore(DataDir(cfg.data_dir).models).active_version() == "0.1.0"
    assert "health" not in first, "no [sync] health_url: nothing is sent"

    # the programme publishes a good bundle under the same version: a new address is fetched and installed
    good = release.bundle("net-good.tar", "0.2.0")
    programme.files["/releases/index.json"] = json.dumps({"version": "0.2.0", "url": "/releases/b2.tar"}).encode()
    programme.files["/releases/b2.tar"] = good.read_bytes()
    assert run_sync(cfg, once=True)["models"]["outcome"] == "installed"


@pytest.mark.parametrize("index, why", [
    (b"<html>maintenance</html>", "did not answer with JSON"),
    (json.dumps({"version": "latest", "url": "b.tar"}).encode(), "numbers with dots"),
    (json.dumps({"url": "b.tar"}).encode(), "names no version and url"),
    (503, "answered HTTP 503"),
])
def test_a_release_index_the_unit_cannot_use_is_reported_in_words(release, tmp_path, programme, index, why):
    programme.files["/releases/index.json"] = index
    cfg = unit_config(release, tmp_path, programme)
    out = run_sync(cfg, once=True)
    assert out["models"]["outcome"] == "error" and why in out["models"]["error"]
    assert json.loads((DataDir(cfg.data_dir).models / "release-check.json").read_text())["outcome"] == "error"
    assert ModelStore(DataDir(cfg.data_dir).models).active_version() == "0.1.0"


def test_a_health_endpoint_elsewhere_never_sees_the_pacs_credentials(release, tmp_path, programme, elsewhere):
    cfg = unit_config(release, tmp_path, programme, health_url=f"{elsewhere.url}/fleet/health")
    cfg.models.release_url = ""
    with VisitLog(cfg.data_dir):
        pass
    out = run_sync(cfg, once=True)
    assert out["health"] == "sent" and "models" not in out
    (posted,) = elsewhere.sent("POST", "/fleet/health")
    assert posted["authorization"] is None
    assert programme.requests == [], "nothing was due, so the PACS was not asked anything"

    elsewhere.files["/fleet/health"] = 500
    out = run_sync(cfg, once=True)
    assert out["health"].startswith("not sent:") and "HTTP 500" in out["health"] and out["runs"] == 1


def test_the_health_command_and_the_usb_export_carry_the_same_report(release, tmp_path, capsys):
    cfg = release.config(tmp_path / "unit")
    data = ["--data-dir", str(cfg.data_dir)]
    assert main(["health", "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"] == {"ok": True, "release": "0.1.0", "shipped": True, "versions": registry.versions()}
    assert report["queue"] == {"pending": 0, "sent": 0, "quarantined": 0} and report["last_errors"] == []
    assert "model_update" not in report and report["calibration"] is None and report["light_dose_totals"] is None
    assert main(["health", *data]) == 0
    text = capsys.readouterr().out
    assert "models    release 0.1.0 (shipped), files match their hashes" in text and "calibration none on this unit" in text

    stick = tmp_path / "stick"
    stick.mkdir()
    with VisitLog(cfg.data_dir) as visits:
        written = export(visits, stick, device_id="test-unit", health=health.report(cfg, visits))
    on_stick = json.loads((stick / "health.json").read_text())
    assert written["health_json"] == str(stick / "health.json")
    assert {k: on_stick[k] for k in ("device_id", "models", "queue", "calibration")} == \
        {k: report[k] for k in ("device_id", "models", "queue", "calibration")} | {"device_id": "test-unit"}


def test_the_health_report_carries_the_units_calibration_file_as_it_says_it(release, tmp_path, capsys):
    cfg = release.config(tmp_path / "unit")
    cfg.data_dir.mkdir(parents=True)
    calibration = {"calibrated_at": "2025-05-30T09:12:00+00:00", "by": "field engineer", "led_gain": [0.98, 1.02]}
    DataDir(cfg.data_dir).calibration.write_text(json.dumps(calibration))
    data = ["--data-dir", str(cfg.data_dir)]
    assert main(["health", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == calibration
    assert main(["health", *data]) == 0
    assert '"calibrated_at": "2025-05-30T09:12:00+00:00"' in capsys.readouterr().out
    stick = tmp_path / "stick"
    stick.mkdir()
    with VisitLog(cfg.data_dir) as visits:
        export(visits, stick, device_id="test-unit", health=health.report(cfg, visits))
    assert json.loads((stick / "health.json").read_text())["calibration"] == calibration

    dated = {"format": 1, "version": 2, "date": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).isoformat(),
             "module_serial": "GSO-SIM-0001"}
    DataDir(cfg.data_dir).calibration.write_text(json.dumps(dated))
    assert main(["health", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] == dated | {"age_days": 40.0}

    DataDir(cfg.data_dir).calibration.write_text('{"calibrated_at": ')  # cut short: said, and the report still goes
    assert main(["health", "--json", *data]) == 0
    said = json.loads(capsys.readouterr().out)["calibration"]["error"]
    assert said.startswith("calibration.json cannot be read:")


def test_the_health_report_names_the_last_sending_errors_newest_first(release, tmp_path, shared_data):
    cfg = release.config(tmp_path / "unit")
    with VisitLog(cfg.data_dir) as visits:
        add_visits(visits, sample_eyes(shared_data, 1), 1, random.Random(5))
        first, second = (item["id"] for item in visits.outbox_items())
        visits.outbox_mark_failed(first, "no answer from the PACS within 30 s")
        visits.outbox_mark_failed(second, "HTTP 409: the PACS refused the study", quarantine=True)
        visits.outbox_mark_sent(first)
        report = health.report(cfg, visits)
    assert report["queue"] == {"pending": 0, "sent": 1, "quarantined": 1}
    assert [(e["outcome"], e["error"]) for e in report["last_errors"]] == [
        ("quarantined", "HTTP 409: the PACS refused the study"), ("failed", "no answer from the PACS within 30 s")]
    assert report["last_attempt"]["outcome"] == "sent"
    assert report["light_dose_totals"] == {"eyes": 0, "radiant_exposure_mj_cm2": 0, "highest_per_eye_mj_cm2": None,
                                           "peak_irradiance_mw_cm2": None, "stopped_at_a_limit": 0}
    assert "error     " in health.as_text(report) and "1 quarantined" in health.as_text(report)


def test_the_health_report_adds_up_the_light_the_unit_gave(release, tmp_path):
    from hardware.light_dose import EyeDose, LightLimits

    def dose(preview_mj: float, flashes: int, stopped: str | None = None) -> dict:
        given = EyeDose(preview_s=preview_mj / 0.1, preview_mj_cm2=preview_mj, flashes=flashes, flash_s=0.2 * flashes,
                        flash_mj_cm2=0.02 * flashes, peak_irradiance_mw_cm2=0.1 + flashes)
        return {**given.to_dict(), "limits": LightLimits().to_dict(), "stopped": stopped}

    cfg = release.config(tmp_path / "unit")
    with VisitLog(cfg.data_dir) as visits:
        visits.add_patient("HL-1")
        visit = visits.start_visit("HL-1")
        visits.record_light_dose(visit, "right", dose(2.0, 2))
        visits.record_light_dose(visit, "left", dose(1.0, 1, stopped="the per-visit cap was reached"))
        report = health.report(cfg, visits)
    assert report["light_dose_totals"] == {"eyes": 2, "radiant_exposure_mj_cm2": pytest.approx(3.06),
                                           "highest_per_eye_mj_cm2": pytest.approx(2.04),
                                           "peak_irradiance_mw_cm2": pytest.approx(2.1), "stopped_at_a_limit": 1}
    assert '"eyes": 2' in health.as_text(report)


def test_a_damaged_model_file_makes_the_health_report_say_so(release, tmp_path, capsys):
    cfg = release.config(tmp_path / "unit")
    model_update.install(cfg, release.bundle("health-0.2.0.tar", "0.2.0"))
    folder = active_artifacts(DataDir(cfg.data_dir).models)
    (folder / "glaucoma.onnx").write_bytes(b"a half-copied file")
    assert main(["health", "--data-dir", str(cfg.data_dir)]) == 1
    assert "DAMAGED: model file glaucoma.onnx is damaged" in capsys.readouterr().out
