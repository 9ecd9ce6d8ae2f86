"""The reading centre's review app in the grader's language (issue 18), through Flask's test client: the kiosk's
catalogs, `?lang=xx` on any page, a language switch in the bar, and each grader's account language from sign-in on
(an administrator's choice, else the language of the first sign-in). Against a real Orthanc, the worklist and an
eye's page in Hindi and French: the unit's reasons, recorded in English in its report, said in the grader's
language with their figures written the grader's way. A PACS that does not answer (a real client to a closed port
on 127.0.0.1) is said in the grader's language, what the PACS library said kept apart and marked as English."""
from __future__ import annotations

import html
import re

import pytest
from babel.numbers import format_decimal, format_percent

from device.accounts import Accounts
from device.config import Config
from device.kiosk import languages
from device.kiosk.screening import SKIP_REASONS
from device.kiosk.wording import said
from device.outbox.dicom import study_uids
from device.outbox.dicomweb import DicomWebClient
from device.outbox.sync import run_sync
from device.reading_centre import create_app
from device.reading_centre.pacs import ReadingRoom
from device.screening import referral
from device.visits.visitlog import VisitLog
from tests.device.kiosk.test_languages import DEVANAGARI, foreign_words, page_language
from tests.device.reading_centre.test_reading_centre import GRADER, GRADER_PIN, csrf_of, grader_signs_in

pytest_plugins = ["tests.orthanc"]

NAMES = {"Wambui", "Njeri", "KSI", "dr", "wanjiru"}   # the patient, her clinic number and the grader, as written
CLOSED_PORT = "http://127.0.0.1:9/dicom-web"   # nothing listens on the discard port: every question is refused


def review_app(tmp_path, url: str, username: str | None = None, password: str | None = None):
    accounts = Accounts(tmp_path / "reading-centre" / "accounts.db")
    if accounts.get(GRADER) is None:
        accounts.add(GRADER, GRADER_PIN)
    room = ReadingRoom(DicomWebClient(url, username=username, password=password, timeout=10))
    return create_app(room, accounts, secret_key=b"r" * 32, testing=True), room, accounts


@pytest.fixture
def unreachable_pacs(tmp_path):
    app, room, accounts = review_app(tmp_path, CLOSED_PORT)
    yield app, accounts
    room.close()
    accounts.close()


@pytest.fixture
def over_orthanc(tmp_path, orthanc):
    app, room, accounts = review_app(tmp_path, orthanc.url, orthanc.username, orthanc.password)
    yield app, accounts
    room.close()
    accounts.close()


def referred_eye_sent(tmp_path, eyes, pacs_config) -> tuple[str, list[str]]:
    """A finished visit whose right eye the unit referred, with the reasons the referral rule gives in English, sent
    to the PACS by the unit's own sync; the left eye skipped. The study and the reasons."""
    reasons = referral.ReferralPolicy().decide(gradable=True, quality_messages=[], vcdr=0.82, probability=0.73)[1]
    with VisitLog(tmp_path / "unit") as visits:
        visits.add_patient("KSI-0117", name="Wambui Njeri", year_of_birth=1956, sex="F", consent=True)
        visit = visits.start_visit("KSI-0117", operator="amina", device_id="test-unit")
        capture = visits.add_capture(visit, "right", eyes[0].photo_jpeg, quality={"gradable": True})
        visits.add_result(capture, {**eyes[0].result, "vcdr": 0.82, "glaucoma_probability": 0.73, "referral": "refer",
                                    "referral_reasons": reasons}, masks_png=eyes[0].masks_png)
        visits.skip_eye(visit, "left", SKIP_REASONS["declined"])
        visits.finalize_visit(visit)
    assert run_sync(Config(data_dir=tmp_path / "unit", device_id="test-unit", sync=pacs_config), once=True)["sent"] == 1
    return study_uids(visit, "right")["study"], reasons


def test_the_sign_in_page_in_hindi_has_no_english_sentence(unreachable_pacs):
    app, _ = unreachable_pacs
    client = app.test_client()
    page = client.get("/signin?lang=hi").text
    assert page_language(page) == "hi" and "साइन इन करें" in page
    assert foreign_words(page, NAMES) == []
    # the switch names each language in its own words, marked as that language, and keeps the page it is on
    assert re.search(r'<a lang="sw" hreflang="sw" href="/signin\?lang=sw">Kiswahili</a>', page)
    assert re.search(r'<a lang="hi" [^>]*aria-current="true">हिन्दी</a>', page)
    english = client.get("/signin?lang=en").text
    assert page_language(english) == "en" and "Your name" in english


def test_a_graders_language_comes_from_the_account_and_lang_switches_any_page(unreachable_pacs):
    app, accounts = unreachable_pacs
    client = app.test_client()
    assert page_language(client.get("/signin?lang=sw").text) == "sw"
    assert grader_signs_in(client).status_code == 302
    assert accounts.get(GRADER)["language"] == "sw", "an account keeps the language of its first sign-in"
    down = client.get("/")   # the worklist asks the PACS, which does not answer
    assert down.status_code == 503 and page_language(down.text) == "sw" and "PACS haikujibu" in down.text
    detail = re.search(r'<p class="detail" id="detail">(.*?)</p>', down.text, re.S).group(1)
    assert detail.startswith("PACS ilichosema") and '<span lang="en">' in detail, "the library's words, marked as English"
    assert page_language(client.get("/?lang=es").text) == "es"
    assert page_language(client.get("/").text) == "es", "the session keeps the language chosen"
    client.post("/signout", data={"csrf_token": csrf_of(client.get("/signin").text)})
    assert page_language(client.get("/signin").text) == "es", "signing out keeps the session's language"

    accounts.set_language(GRADER, "fr")   # as an administrator sets it
    grader_signs_in(client)
    assert page_language(client.get("/").text) == "fr" and accounts.get(GRADER)["language"] == "fr"

    hindi = app.test_client()
    hindi.get("/signin?lang=hi")
    grader_signs_in(hindi)
    down = hindi.get("/")
    assert page_language(down.text) == "fr", "the account's language wins over the sign-in page's"
    assert page_language(hindi.get("/?lang=hi").text) == "hi"
    assert foreign_words(hindi.get("/").text, NAMES) == [], "the PACS's own words are marked, the rest is Hindi"


@pytest.mark.orthanc
def test_the_worklist_and_an_eye_in_hindi_and_french(tmp_path, over_orthanc, eyes, pacs_config):
    app, accounts = over_orthanc
    study, reasons = referred_eye_sent(tmp_path, eyes, pacs_config)
    accounts.set_language(GRADER, "hi")
    client = app.test_client()
    grader_signs_in(client)

    worklist = client.get("/").text
    assert page_language(worklist) == "hi" and foreign_words(worklist, NAMES) == []
    assert "जाँचना बाक़ी" in worklist and "दाईं आँख" in worklist and format_percent(0.73, locale="hi") in worklist
    eye = client.get(f"/studies/{study}").text
    assert foreign_words(eye, NAMES) == [], "the unit's reasons, recorded in English, are said in Hindi"
    findings = re.search(r'<ul id="unit-findings">(.*?)</ul>', eye, re.S).group(1)
    assert DEVANAGARI.search(findings) and not any(reason in findings for reason in reasons)

    french = client.get(f"/studies/{study}?lang=fr").text
    assert page_language(french) == "fr"
    findings = re.search(r'<ul id="unit-findings">(.*?)</ul>', french, re.S).group(1)
    assert f"Rapport cup/disc vertical {format_decimal(0.82, '0.00', locale='fr')}" in findings   # 0,82
    assert format_percent(0.73, locale="fr") in findings
    with app.test_request_context("/"), languages.in_language("fr"):
        in_french = [said(r) for r in reasons]
    assert all(r not in findings for r in reasons) and all(words in html.unescape(findings) for words in in_french)

    stored = client.post(f"/studies/{study}/verdict", data={"csrf_token": csrf_of(french), "verdict": "urgent", "note": ""},
                         follow_redirects=True)
    assert "Avis enregistré : À adresser en urgence." in stored.text.replace("&nbsp;", " ")
    assert "par dr-wanjiru" in stored.text and "À lire" not in stored.text
    given = re.search(r'<ul id="verdicts">\s*<li>(.*?)</li>', client.get(f"/studies/{study}").text, re.S).group(1)
    assert re.fullmatch(r"À adresser en urgence, par dr-wanjiru le \d+ \w+\.? \d{4} à \d\d:\d\d", given), given
