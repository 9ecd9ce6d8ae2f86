"""The administrator's operations pages through Flask's test client, on the real unit in simulation: the
models and the engine that runs, the camera, lights and optic module as they are, the quality and light
settings (checked, written to the overrides file, put to work at once and loaded again by the
configuration), the storage figures, and an export to a folder standing in for a USB stick."""
from __future__ import annotations

import html
import random
import re
import shutil
import time

import pytest

from device.config import Config, overrides_path
from device.kiosk import create_app
from device.kiosk.operations import size
from device.kiosk.usb_export import export_folder_name, find_drives
from device.lab.sync_trials import add_visits, sample_eyes
from device.visits.datadir import DataDir
from models.runtime import registry
from tests.device.kiosk.test_kiosk import add_workers, csrf_of, make_unit, sign_in, unit  # noqa: F401 (a fixture)

PAGES = ["/admin/models", "/admin/devices", "/admin/settings/", "/admin/storage", "/admin/export/"]
POSTS = ["/admin/settings/", "/admin/settings/reset", "/admin/export/"]


@pytest.fixture
def fresh_unit(tmp_path):
    """A unit of its own, for a test that changes its settings."""
    u = make_unit(tmp_path / "unit")
    add_workers(u)
    yield u
    u.close()


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


def admin_client(unit, **config):
    app = create_app(unit, secret_key=b"k" * 32, testing=True)
    app.config.update(config)
    client = app.test_client()
    assert sign_in(client).status_code == 302
    return client


def text_of(page: str, element_id: str) -> str:
    """The words inside the element with this id, tags stripped (as a person reads them)."""
    m = re.search(rf'id="{element_id}"[^>]*>(.*?)</(?:dd|p|strong|div|section)>', page, re.S)
    assert m, f"no element #{element_id} on the page"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", m.group(1))).split())


def settings_form(page: str) -> dict:
    """Every setting's field as the page fills it, and the page's CSRF token."""
    fields = dict(re.findall(r'name="((?:capture|quality)\.\w+)" value="([^"]*)"', page))
    return fields | {"csrf_token": csrf_of(page)}


def wait_for(condition, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)
    return value


# -- who may ----------------------------------------------------------------------------------------
def test_operations_pages_are_for_admins_only(unit):
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    for url in PAGES:
        r = client.get(url)
        assert r.status_code == 302 and r.headers["Location"].startswith("/signin?next="), url
    sign_in(client, "joseph", "1357")
    token = csrf_of(client.get("/").text)
    for url in PAGES + ["/admin/export/state"]:
        r = client.get(url)
        assert r.status_code == 403 and "Only for an administrator" in r.text, url
    for url in POSTS:
        assert client.post(url, data={"csrf_token": token, "capture.max_led_level": "0.1"}).status_code == 403, url
    assert not overrides_path(unit.config.data_dir).exists()
    assert unit.config.capture.max_led_level == 0.8
    assert 'href="/admin/models"' not in client.get("/").text


def test_every_admin_page_links_to_the_others(unit):
    client = admin_client(unit)
    for url in ["/admin/", "/admin/sync"] + PAGES:
        page = client.get(url).text
        for target in PAGES + ["/admin/", "/admin/sync"]:
            assert f'href="{target}"' in page, f"{url} does not link to {target}"
        assert 'aria-current="page"' in page, url


def test_forms_without_the_csrf_token_are_refused(fresh_unit, tmp_path):
    stick = tmp_path / "media" / "STICK"
    stick.mkdir(parents=True)
    client = admin_client(fresh_unit, EXPORT_ROOTS=[str(stick.parent)], EXPORT_MOUNTED_ONLY=False)
    form = settings_form(client.get("/admin/settings/").text)
    del form["csrf_token"]
    form["capture.max_led_level"] = "0.3"
    assert client.post("/admin/settings/", data=form).status_code == 400
    assert client.post("/admin/settings/", data=form | {"csrf_token": "not-the-token"}).status_code == 400
    assert client.post("/admin/settings/reset").status_code == 400
    assert not overrides_path(fresh_unit.config.data_dir).exists()
    assert fresh_unit.config.capture.max_led_level == 0.8 and fresh_unit.illumination.max_level == 0.8
    r = client.post("/admin/export/", data={"drive": str(stick)})
    assert r.status_code == 400 and "open too long" in r.text
    assert client.get("/admin/export/state").json["status"] == "idle"
    assert list(stick.iterdir()) == []


# -- models -------------------------------------------------------------------------------------------
def test_models_page_shows_each_build_with_its_hash_and_what_runs(unit):
    client = admin_client(unit)
    page = client.get("/admin/models").text
    entry = registry.manifest()["segmentation"]
    engine = unit.pipeline.engine
    for precision, build in (("fp32", entry), ("int8", entry["int8"])):
        block = page[page.index(f'id="build-segmentation-{precision}"'):]
        block = block[:block.index("</li>")]
        assert build["sha256"] in block and build["file"] in block and build["version"] in block
        assert "Verified" in block
        assert ("In use" in block) == (precision == engine.precision)
    assert text_of(page, "segmentation-precision") == engine.precision.upper()
    assert unit.config.precision == "auto"  # what "auto" picks here is what the pipeline measured and runs
    setting = page[page.index('id="segmentation-precision"'):page.index('id="build-segmentation-fp32"')]
    assert f"(here: {engine.precision.upper()})" in setting
    assert text_of(page, "segmentation-backend") == "ONNX Runtime (CPU)"
    threads = engine.session.get_session_options().intra_op_num_threads
    assert text_of(page, "segmentation-threads") == str(threads)
    assert f"Precision shipped</dt><dd>{registry.shipped_precision('segmentation').upper()}" in page
    block = page[page.index('id="build-progression-fp32"'):]  # the progression engine runs too
    assert "In use" in block[:block.index("</li>")]
    assert text_of(page, "progression-backend") == "ONNX Runtime (CPU)"
    # the disc classifier is installed and verified, and not run: the shipped referral rule does not use its score
    assert text_of(page, "glaucoma-not-run") == "Not run: the referral rule does not use it"
    for precision in ("fp32", "int8"):
        if f'id="build-glaucoma-{precision}"' in page:
            block = page[page.index(f'id="build-glaucoma-{precision}"'):]
            assert "In use" not in block[:block.index("</li>")] and "Verified" in block[:block.index("</li>")]
    # the referral rule says on which cameras its operating point was measured, and that it holds for no other
    cameras = text_of(page, "referral-cameras")
    assert "REFUGE, Canon CR-2 (" in cameras and "Drishti-GS1" in cameras and "not measured on any other camera" in cameras
    # and what the risk is made of: the shipped rule's own opinions, in words
    assert text_of(page, "referral-opinions") == unit.pipeline.policy.described().capitalize() + "."
    assert "cup-to-disc ratio" in text_of(page, "referral-opinions")


def test_a_model_file_that_does_not_match_its_hash_is_shown_unverified(unit, monkeypatch):
    """The hash check is the doctor's; a file whose bytes changed on the card reads as damaged."""
    monkeypatch.setattr(registry, "sha256_file", lambda path: "0" * 64)
    page = admin_client(unit).get("/admin/models").text
    builds = sum(1 + ("int8" in entry) for entry in registry.manifest().values())  # every ONNX file shipped
    assert builds >= 2 and page.count("Not verified") == builds and "is damaged" in page
    assert "✓ Verified" not in page


# -- camera, lights, optic module -----------------------------------------------------------------------
def test_devices_page_shows_frames_lights_and_the_optic_module(unit):
    client = admin_client(unit)
    wait_for(lambda: (unit.frames.rate()["fps"] or 0) > 0)
    asked = []
    real_identify = unit.optic_module.identify
    unit.optic_module.identify = lambda: asked.append(1) or real_identify()
    try:
        page = client.get("/admin/devices").text
    finally:
        unit.optic_module.identify = real_identify
    assert len(asked) == 1  # the module is asked who it is once per page, not once per panel
    assert text_of(page, "camera-kind") == "simulated"
    fps = float(re.search(r"Yes, ([\d.]+) per second", text_of(page, "camera-frames")).group(1))
    assert 1 < fps < 100
    assert float(re.search(r"([\d.]+) s ago", text_of(page, "camera-age")).group(1)) < 2
    ident = unit.optic_module.identify()
    assert text_of(page, "module-serial") == ident["serial"] == "GSO-SIM-0001"
    assert text_of(page, "module-firmware").startswith(ident["firmware"])
    assert text_of(page, "module-port") == ident["port"]
    assert re.fullmatch(r"\d+", text_of(page, "module-focus"))
    assert re.fullmatch(r"\d+\.\d °C", text_of(page, "module-temperature"))
    assert text_of(page, "module-faults") == "None"
    assert text_of(page, "led-limit") == "80%" and text_of(page, "led-cap").startswith("80%")
    assert text_of(page, "infrared") in ("On", "Off")
    assert text_of(page, "capture-running") == "Yes"


def test_devices_page_says_when_the_module_has_a_fault_or_the_camera_stopped(fresh_unit):
    client = admin_client(fresh_unit)
    fresh_unit.rig.simulator.inject_fault("MOTOR_STALL")
    page = client.get("/admin/devices").text
    assert "MOTOR_STALL" in text_of(page, "module-faults")
    fresh_unit.camera.simulate_disconnect()
    wait_for(lambda: fresh_unit.capture.state()["error"])
    page = client.get("/admin/devices").text
    assert "The camera stopped working" in page and text_of(page, "capture-running") == "No"


def test_the_camera_and_lights_page_calibrates_the_module_as_its_instructions_say(fresh_unit):
    unit = fresh_unit
    client = admin_client(unit)
    page = client.get("/admin/devices").text
    assert text_of(page, "calibration-version") == "none" and "has not been calibrated" in page
    for step in ("Finish or cancel any screening", "Hold the grey side of the calibration target flat against the module",
                 "Keep the room's light out", "Press “Calibrate”"):
        assert step in html.unescape(page), step
    limit = text_of(page, "irradiance-limit")
    assert limit.startswith("0.22 mW/cm²") and "ISO 15004-2" in limit and text_of(page, "visit-cap") == "50 mJ/cm²"
    calibration_file = DataDir(unit.config.data_dir).calibration

    page = client.post("/admin/devices/calibrate", data={"csrf_token": csrf_of(page), "light_meter": "bright"},
                       follow_redirects=True).text
    assert "must be a number of mW/cm²" in html.unescape(page) and not calibration_file.exists()

    unit.visits.add_patient("CAL-K1")
    visit = unit.visits.start_visit("CAL-K1", operator="amina")
    unit.begin_capture(visit, "right")  # a patient in front of the module
    page = client.post("/admin/devices/calibrate", data={"csrf_token": csrf_of(page), "light_meter": ""},
                       follow_redirects=True).text
    assert "Calibration refused; nothing was saved." in page and "a screening is using the camera" in page
    assert not calibration_file.exists()
    unit.cancel_capture(visit)

    page = client.post("/admin/devices/calibrate", data={"csrf_token": csrf_of(page), "light_meter": "0.15"},
                       follow_redirects=True).text
    assert "The optic module is calibrated (version 1)." in page
    assert text_of(page, "calibration-version") == "1" and text_of(page, "calibration-serial") == "GSO-SIM-0001"
    assert text_of(page, "calibration-applied") == "Yes" and "has not been calibrated" not in page
    assert "light meter: 0.15 mW/cm2" in page  # the reading typed in scales the LED response
    assert calibration_file.exists()
    assert wait_for(lambda: unit.capture.state()["running"])  # the capture loop is back


# -- settings -------------------------------------------------------------------------------------------
def test_settings_are_checked_saved_applied_and_loaded_again(fresh_unit, tmp_path):
    unit = fresh_unit
    client = admin_client(unit)
    page = client.get("/admin/settings/").text
    form = settings_form(page)
    assert form["quality.min_focus"] == "0.31" and form["capture.max_led_level"] == "0.8"
    assert text_of(page, "led-cap") == "0.8"

    # nonsense is refused with a reason per setting, what was typed is kept, and nothing changes
    bad = form | {"capture.max_led_level": "0.95", "quality.min_focus": "sharp", "capture.consecutive_gradable": "0",
                  "capture.target_brightness": "0.76"}
    r = client.post("/admin/settings/", data=bad)
    assert r.status_code == 422
    assert "safety cap" in text_of(r.text, "setting-capture-max_led_level")
    assert "must be a number" in text_of(r.text, "setting-quality-min_focus")
    assert "from 1 to 30" in text_of(r.text, "setting-capture-consecutive_gradable")
    assert "between 0.1 and 0.7" in text_of(r.text, "setting-capture-target_brightness")
    assert 'value="sharp"' in r.text and 'value="0.95"' in r.text
    assert "Not saved: 4 settings" in r.text
    assert not overrides_path(unit.config.data_dir).exists()
    assert unit.config.quality.min_focus == 0.31 and unit.illumination.max_level == 0.8
    r = client.post("/admin/settings/", data=form | {"capture.target_brightness": "0.6", "quality.max_brightness": "0.55"})
    assert r.status_code == 422 and "too bright" in text_of(r.text, "setting-capture-target_brightness")

    # good values: written to the overrides file, at work in the running loop at once
    good = form | {"capture.max_led_level": "0.6", "capture.consecutive_gradable": "6",
                   "capture.target_brightness": "0.45", "quality.min_focus": "0,3"}
    r = client.post("/admin/settings/", data=good)
    assert r.status_code == 302
    assert "Saved" in client.get(r.headers["Location"]).text
    saved = overrides_path(unit.config.data_dir).read_text()
    assert "max_led_level = 0.6" in saved and "min_focus = 0.3" in saved and "consecutive_gradable = 6" in saved
    assert "min_exposure" not in saved, "only what differs from the configuration file is kept"
    assert "amina" in saved
    assert [p.name for p in unit.config.data_dir.iterdir() if p.name.endswith(".tmp")] == []
    assert unit.capture.gate.settings.min_focus == 0.3 and unit.pipeline.gate.settings.min_focus == 0.3
    assert unit.capture.focus.min_peak == 0.3  # the autofocus's bar for a real peak follows the gate's
    assert unit.capture.settings.consecutive_gradable == 6 and unit.capture.state()["needed"] == 6  # the capture page's bar too
    assert unit.capture.light.target == 0.45 and unit.capture.light.max_level == 0.6
    assert unit.illumination.max_level == 0.6
    wait_for(lambda: unit.illumination.state()["white"] <= 0.6)
    page = client.get("/admin/settings/").text
    assert settings_form(page)["capture.max_led_level"] == "0.6" and "the configuration file says 0.8" in page

    # the configuration loads them again at the next start
    cfg = Config.load(tmp_path / "no-such.toml", data_dir=unit.config.data_dir)
    assert (cfg.capture.max_led_level, cfg.capture.consecutive_gradable, cfg.capture.target_brightness) == (0.6, 6, 0.45)
    assert cfg.quality.min_focus == 0.3 and cfg.quality.min_exposure == 0.18 and cfg.led_safety_cap == 0.8

    # back to the configuration file's values
    token = csrf_of(page)
    assert client.post("/admin/settings/reset", data={"csrf_token": token}).status_code == 302
    assert not overrides_path(unit.config.data_dir).exists()
    assert unit.capture.gate.settings.min_focus == 0.31 and unit.illumination.max_level == 0.8
    assert unit.capture.light.target == 0.42 and unit.capture.settings.consecutive_gradable == 4
    assert Config.load(tmp_path / "no-such.toml", data_dir=unit.config.data_dir).capture.max_led_level == 0.8


# -- storage --------------------------------------------------------------------------------------------
def test_storage_page_shows_the_disk_the_unit_parts_and_the_limits(fresh_unit, eyes):
    unit = fresh_unit
    add_visits(unit.visits, eyes, 2, random.Random(7))
    page = admin_client(unit).get("/admin/storage").text
    data_dir = unit.config.data_dir
    usage = shutil.disk_usage(data_dir)
    assert text_of(page, "disk-free").endswith("GB") or text_of(page, "disk-free").endswith("MB")
    shown_free = float(text_of(page, "disk-free").split()[0])
    assert shown_free == pytest.approx(float(size(usage.free).split()[0]), abs=0.2)
    assert text_of(page, "disk-used").endswith(f"of {size(usage.total)} ({usage.used / usage.total:.0%})")
    log_bytes = sum(p.stat().st_size for p in data_dir.glob("visits.db*"))
    assert text_of(page, "visit-log-size") == size(log_bytes)
    images = [p for p in (data_dir / "images").rglob("*") if p.is_file()]
    assert images  # the sample photos (the store keeps each distinct photo once)
    assert text_of(page, "image-store-size") == f"{size(sum(p.stat().st_size for p in images))} ({len(images)} files)"
    assert text_of(page, "refuse-below") == f"{size(unit.visits.min_free_bytes)} free" == "200.0 MB free"
    assert text_of(page, "warn-below") == "2.0 GB free"
    assert "Finished visits</dt><dd>2" in page


# -- export to USB --------------------------------------------------------------------------------------
def test_a_plain_folder_is_never_offered_as_a_usb_drive(tmp_path):
    """Only mount points count (a folder in /media with no stick in it is the unit's own card)."""
    (tmp_path / "media" / "STICK").mkdir(parents=True)
    assert find_drives([tmp_path / "media"]) == []
    assert [d["name"] for d in find_drives([tmp_path / "media"], mounted_only=False)] == ["STICK"]
    found = {d["path"]: d for d in find_drives(["/"])}  # the real mount table: /proc is always one
    assert "/proc" in found and found["/proc"]["mounted"]
    assert str(tmp_path) not in found


def test_export_to_a_usb_folder_writes_the_visits_and_says_so(fresh_unit, eyes, tmp_path):
    unit = fresh_unit
    visits = add_visits(unit.visits, eyes, 2, random.Random(3))
    media = tmp_path / "media"
    stick = media / "CLINIC-USB"
    stick.mkdir(parents=True)
    client = admin_client(unit, EXPORT_ROOTS=[str(media)], EXPORT_MOUNTED_ONLY=False)

    page = client.get("/admin/export/").text
    assert "CLINIC-USB" in page and str(stick) in page and "free of" in page
    token = csrf_of(page)
    r = client.post("/admin/export/", data={"drive": str(tmp_path), "csrf_token": token})
    assert r.status_code == 422 and "not there any more" in r.text, "only a listed drive may be written"
    r = client.post("/admin/export/", data={"drive": str(stick), "since": "2030-01-02", "until": "2030-01-01",
                                            "csrf_token": token})
    assert r.status_code == 422 and "first date is after the last date" in r.text
    assert list(stick.iterdir()) == []

    r = client.post("/admin/export/", data={"drive": str(stick), "csrf_token": token})
    assert r.status_code == 302
    job = client.application.extensions["glaucoscreen.export_job"]
    state = job.wait(120)
    assert state["status"] == "finished", state
    assert client.get("/admin/export/state").json["result"]["visits"] == 2
    folder = stick / export_folder_name(unit.config.device_id)
    assert folder.name == "GlaucoScreen-test-unit"
    for visit in visits:
        for eye in ("right", "left"):
            assert sorted(p.name for p in (folder / visit / eye).iterdir()) == ["fhir-bundle.json", "photo.dcm", "report.dcm", "segmentation.dcm"]
    assert len((folder / "visits.csv").read_text().splitlines()) == 1 + 4
    page = client.get("/admin/export/").text
    assert "2 visits (4 eyes, 16 files" in text_of(page, "export-result")

    # an export that cannot go on says why on the page
    (folder / "visits.csv").write_text("name,amount\r\nrent,10\r\n")
    client.post("/admin/export/", data={"drive": str(stick), "csrf_token": token})
    assert job.wait(60)["status"] == "failed"
    assert "not written by a GlaucoScreen export" in text_of(client.get("/admin/export/").text, "export-error")


def test_no_drive_plugged_in_is_said_plainly(unit, tmp_path):
    (tmp_path / "media" / "folder-not-a-stick").mkdir(parents=True)
    client = admin_client(unit, EXPORT_ROOTS=[str(tmp_path / "media")])
    page = client.get("/admin/export/").text
    assert "No USB drive found" in text_of(page, "no-drive") and "folder-not-a-stick" not in page
    assert re.search(r'<button class="button button-main" type="submit"\s+disabled>Export', page)
