"""The reading centre in a real Chromium (Debian's, through Playwright) against the review app served by waitress
over a real Orthanc: a grader signs in, opens the worklist, looks at the referred eye's photo and records a
verdict; after one `glaucoscreen sync --once` the kiosk's patient page, in the same browser, says what the eye doctor said.
Screenshots land in test-artifacts/screenshots/ for a person to look at."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import waitress

from device.accounts import Accounts
from device.cli import main
from device.config import Config
from device.kiosk import create_app as create_kiosk
from device.outbox.dicom import study_uids
from device.outbox.dicomweb import DicomWebClient
from device.outbox.sync import run_sync
from device.reading_centre import create_app
from device.reading_centre.pacs import ReadingRoom
from tests.device.kiosk.test_kiosk import PIN, add_workers, make_unit
from tests.device.kiosk.test_kiosk_browser import type_pin_on_keypad
from tests.device.reading_centre.test_reading_centre import GRADER, GRADER_PIN, NOTE, screened_visit


def photo_loaded(page, timeout_s: float = 30.0) -> None:
    """Wait for the study's photo. The review app's content security policy allows no evaluated script, so
    the check runs as a function on the element (which it allows), not as wait_for_function's string."""
    deadline = time.monotonic() + timeout_s
    while not page.locator("#photo").evaluate("img => img.complete && img.naturalWidth > 0"):
        assert time.monotonic() < deadline, "the study's photo never loaded"
        time.sleep(0.1)

pytestmark = [pytest.mark.browser, pytest.mark.orthanc]
pytest_plugins = ["tests.orthanc"]

SHOTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "screenshots"


def served(app) -> tuple[str, waitress.server.BaseWSGIServer, threading.Thread]:
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return f"http://127.0.0.1:{server.effective_port}", server, thread


def test_a_grader_records_a_verdict_in_chromium_and_the_kiosk_shows_it_after_one_sync(tmp_path, orthanc, eyes,
                                                                                     pacs_config, page, capsys):
    unit = make_unit(tmp_path / "unit")
    accounts = Accounts(tmp_path / "reading-centre" / "accounts.db")
    room = ReadingRoom(DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10))
    running = []
    try:
        add_workers(unit)
        accounts.add(GRADER, GRADER_PIN)
        visit = screened_visit(unit.visits, eyes)
        cfg = Config(data_dir=unit.config.data_dir, device_id="test-unit", sync=pacs_config)
        assert run_sync(cfg, once=True)["sent"] == 2
        centre, *rest = served(create_app(room, accounts))
        running.append(rest)
        kiosk, *rest = served(create_kiosk(unit))
        running.append(rest)
        SHOTS.mkdir(parents=True, exist_ok=True)

        page.set_viewport_size({"width": 1280, "height": 800})
        page.goto(centre + "/")
        assert "/signin" in page.url
        page.fill("#user", GRADER)
        page.fill("#pin", GRADER_PIN)
        page.click("form.signin button[type=submit]")
        page.wait_for_url(centre + "/")
        rows = page.locator("#worklist tbody tr")
        assert rows.count() == 2
        assert rows.first.get_attribute("data-study") == study_uids(visit, "right")["study"]  # referred first
        page.screenshot(path=str(SHOTS / "reading-centre-worklist.png"), full_page=True)
        rows.first.locator("a").click()
        photo_loaded(page)
        assert page.inner_text("#unit-referral") == "Refer"
        page.check("input[name=verdict][value=urgent]")
        page.fill("#note", NOTE)
        page.screenshot(path=str(SHOTS / "reading-centre-verdict.png"), full_page=True)
        page.click("#verdict-form button[type=submit]")
        page.wait_for_url(centre + "/")
        assert "Verdict stored: Urgent referral." in page.inner_text("main")
        assert "Urgent referral" in page.inner_text("#worklist tbody tr:first-child")

        # the unit's own command, as its timer runs it, with the settings in its configuration file
        settings = tmp_path / "glaucoscreen.toml"
        settings.write_text(f'device_id = "test-unit"\n[sync]\nurl = "{pacs_config.url}"\nusername = "{pacs_config.username}"\n'
                            f'password_file = "{pacs_config.password_file}"\ntimeout_s = 10\n')
        capsys.readouterr()
        assert main(["--config", str(settings), "--data-dir", str(cfg.data_dir), "sync", "--once"]) == 0
        assert json.loads(capsys.readouterr().out)["verdicts_received"] == 1

        page.set_viewport_size({"width": 800, "height": 480})
        page.goto(kiosk + "/patients/KSI-0117")
        page.check("input[name=user][value=amina]")
        type_pin_on_keypad(page, PIN)
        page.click("main button[type=submit]")
        page.wait_for_url(kiosk + "/patients/KSI-0117")
        said = page.inner_text(f"#verdict-{visit}-right")
        assert said.startswith("The eye doctor says: urgent referral.") and NOTE in said
        page.screenshot(path=str(SHOTS / "kiosk-patient-verdict.png"), full_page=True)
    finally:
        for server, thread in running:
            server.close()
            thread.join(timeout=5)
        room.close()
        accounts.close()
        unit.close()
