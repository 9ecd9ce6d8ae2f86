"""The kiosk in English, Hindi, Swahili, Spanish and French (issue 18), through Flask's test client on the
real unit in simulation: complete catalogs, compiled as written; who chooses the language (`?lang=`, the
account, the first sign-in, the sign-in page's switch); the patient's own language on the slip while the
kiosk stays in the worker's; what the unit recorded in English said in the reader's language, with its
figures written the reader's way; and the visit log's and the accounts' new columns."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from babel.numbers import format_decimal, format_percent
from markupsafe import escape

from device.accounts import Accounts, accounts_path
from device.config import MAX_CONSECUTIVE_GRADABLE, Config, SettingsError, check_overrides
from device.kiosk import create_app, languages
from device.kiosk.screening import CANCEL_REASONS, SKIP_REASONS
from device.kiosk.usb_export import progress_words
from device.kiosk.wording import CANCELLED, said
from device.screening import progression, quality, referral, registration
from device.visits.visitlog import VisitLog
from tests.device.kiosk.test_kiosk import PIN, add_workers, csrf_of, make_unit
from tests.test_install import dry_run, packages

REPO = Path(__file__).resolve().parents[3]
TRANSLATIONS = REPO / "device" / "kiosk" / "translations"
TRANSLATED = ("hi", "sw", "es", "fr")   # English is the source language: its words are the messages themselves
# what README's `pybabel extract -F babel.cfg -k lazy_gettext -k _l` looks for
KEYWORDS = dict(DEFAULT_KEYWORDS, lazy_gettext=None, _l=None)
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\w+\}")
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
DEVANAGARI = re.compile(r"[\u0900-\u097F]")


@pytest.fixture(scope="module")
def unit(tmp_path_factory):
    u = make_unit(tmp_path_factory.mktemp("languages") / "unit")
    add_workers(u)
    yield u
    u.close()


@pytest.fixture
def app(unit):
    return create_app(unit, secret_key=b"k" * 32, testing=True)


def accounts_of(unit) -> Accounts:
    return Accounts(accounts_path(unit.config.data_dir))


def sign_in_as(client, user: str, pin: str, query: str = "") -> None:
    token = csrf_of(client.get("/signin" + query).text)
    assert client.post("/signin", data={"user": user, "pin": pin, "csrf_token": token}).status_code == 302


def page_language(page: str) -> str:
    return re.search(r'<html lang="([^"]*)">', page).group(1)


class _Visible(HTMLParser):
    """The words a reader meets on a page (text, and the titles, labels and placeholders a screen reader says),
    with the language each is marked as being in."""

    SAID_ATTRIBUTES = ("title", "alt", "aria-label", "placeholder")
    SKIPPED = {"script", "style", "code"}
    VOID = {"br", "img", "input", "meta", "link", "hr", "source", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str | None]] = []
        self.words: list[tuple[str, str]] = []

    def _lang(self) -> str:
        return next((lang for _, lang in reversed(self.stack) if lang), "")

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        lang = attrs.get("lang")
        for name in self.SAID_ATTRIBUTES:
            if attrs.get(name):
                self.words.append((lang or self._lang(), attrs[name]))
        if tag not in self.VOID:
            self.stack.append((tag, lang))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        if data.strip() and not any(t in self.SKIPPED for t, _ in self.stack):
            self.words.append((self._lang(), data.strip()))


def english_words(page: str, allowed: set[str]) -> list[str]:
    """Latin-script words of the page's own language (names and the brand aside): none on a Hindi page."""
    parser = _Visible()
    parser.feed(page)
    own = page_language(page)
    found = []
    for lang, text in parser.words:
        if lang != own:
            continue
        found += [w for w in LATIN_WORD.findall(html.unescape(text)) if w not in allowed]
    return found


# -- catalogs ---------------------------------------------------------------------------------------
def source_messages() -> dict[str, str | None]:
    """Every message the kiosk's code, templates and scripts mark, as `pybabel extract` finds them: msgid ->
    msgid_plural (None for a message without plural forms)."""
    with open(REPO / "babel.cfg") as cfg:
        method_map, options_map = parse_mapping_cfg(cfg, "babel.cfg")
    found: dict[str, str | None] = {}
    for _file, _line, message, _comments, _context in extract_from_dir(str(REPO), method_map, options_map, keywords=KEYWORDS):
        if isinstance(message, tuple):
            found[message[0]] = message[1]
        else:
            found.setdefault(message, None)
    return found


def test_the_catalogs_name_every_marked_message():
    """The extraction itself works on this tree: it finds the kiosk's words in Python, templates and scripts,
    and the sentences the screening records in English."""
    found = source_messages()
    assert "Who are you?" in found                                     # a template
    assert found["Wrong PIN. %(num)d more try before the account is locked."]   # a plural, in Python
    assert "The unit is not answering. Wait a moment." in found        # a script
    assert quality.MESSAGES["too_dark"] in found and referral.HEADLINE[referral.REFER] in found   # recorded, marked N_
    assert len(found) > 400


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_catalog_translates_every_message_with_its_placeholders(language):
    """A message the code marks but the catalog lacks, leaves empty or marks fuzzy is a fault; so is a
    translation that loses or invents a placeholder (the page would show the raw name or fail)."""
    catalog = read_po(open(TRANSLATIONS / language / "LC_MESSAGES" / "messages.po", "rb"), locale=language)
    assert not catalog.fuzzy, f"{language}: the catalog's header is marked fuzzy, so pybabel compile skips it"
    header = " ".join(line.lstrip("# ") for line in catalog.header_comment.splitlines()).lower()
    assert "draft, to be reviewed by a native-speaking clinician before use" in header, "each catalog says it is a draft"
    problems = []
    for msgid, plural in source_messages().items():
        entry = catalog.get(msgid)
        if entry is None:
            problems.append(f"missing: {msgid!r}")
            continue
        if entry.fuzzy:
            problems.append(f"fuzzy: {msgid!r}")
        forms = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        if plural is not None and len(forms) != catalog.num_plurals:
            problems.append(f"needs {catalog.num_plurals} plural forms: {msgid!r}")
        wanted = set(PLACEHOLDER.findall(msgid)) | set(PLACEHOLDER.findall(plural or ""))
        for form in forms:
            if not form:
                problems.append(f"untranslated: {msgid!r}")
            elif set(PLACEHOLDER.findall(form)) - wanted or (plural is None and set(PLACEHOLDER.findall(form)) != wanted):
                problems.append(f"placeholders differ: {msgid!r} -> {form!r}")
    assert not problems, f"{language}: {len(problems)} problems:\n" + "\n".join(problems[:40])


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_compiled_catalog_is_the_written_one(language):
    """The kiosk reads the .mo files: each must be `pybabel compile` of its .po as it stands."""
    folder = TRANSLATIONS / language / "LC_MESSAGES"

    def key(value):
        return tuple(value) if isinstance(value, (list, tuple)) else value

    written = {key(m.id): key(m.string) for m in read_po(open(folder / "messages.po", "rb"), locale=language)
               if m.id and all([m.string] if isinstance(m.string, str) else m.string)}
    compiled = {key(m.id): key(m.string) for m in read_mo(open(folder / "messages.mo", "rb")) if m.id}
    stale = {k: v for k, v in written.items() if compiled.get(k) != v}
    assert not stale, f"{language}: messages.mo is out of date ({len(stale)} messages): run pybabel compile -d device/kiosk/translations"


# -- who chooses ------------------------------------------------------------------------------------
def test_the_sign_in_page_in_hindi_has_no_english_sentence(app):
    client = app.test_client()
    page = client.get("/signin?lang=hi").text
    assert page_language(page) == "hi"
    names = {u["username"] for u in accounts_of(app.extensions["glaucoscreen.unit"]).list()}
    assert english_words(page, names | {"GlaucoScreen"}) == []
    # the language switch names each language in its own words, marked as that language
    assert re.search(r'<a [^>]*lang="en"[^>]*>English</a>', page) and re.search(r'<a [^>]*lang="sw"[^>]*>Kiswahili</a>', page)
    # and the check finds English where there is some
    assert "Who" in english_words(client.get("/signin?lang=en").text, names | {"GlaucoScreen"})


def test_lang_in_the_address_switches_the_sessions_language_on_any_page(unit, app):
    accounts_of(unit).set_language("joseph", "")   # as a new account: no language yet
    client = app.test_client()
    assert page_language(client.get("/signin?lang=sw").text) == "sw"
    assert page_language(client.get("/signin").text) == "sw", "the session keeps the language chosen"
    sign_in_as(client, "joseph", "1357")
    home = client.get("/").text
    assert page_language(home) == "sw" and "Uchunguzi mpya" in home
    assert accounts_of(unit).get("joseph")["language"] == "sw", "an account keeps the language of its first sign-in"
    assert page_language(client.get("/patients/new?lang=es").text) == "es"
    assert page_language(client.get("/").text) == "es"
    assert page_language(client.get("/?lang=xx").text) == "es", "an unknown language changes nothing"
    client.post("/signout", data={"csrf_token": csrf_of(client.get("/").text)})
    signin = client.get("/signin").text
    assert page_language(signin) == "es" and "¿Quién es usted?" in signin, "signing out keeps the session's language"


def test_the_account_language_set_by_the_admin_wins_at_the_next_sign_in(unit, app):
    accounts_of(unit).set_language("amina", "en")
    accounts_of(unit).set_language("kofi", "")
    admin = app.test_client()
    sign_in_as(admin, "amina", PIN)
    page = admin.get("/admin/").text
    reply = admin.post("/admin/language", data={"username": "kofi", "language": "fr", "csrf_token": csrf_of(page)},
                       follow_redirects=True)
    assert "kofi's kiosk is in Français from their next sign-in." in html.unescape(re.sub(r"<[^>]+>", "", reply.text))
    assert '<span lang="fr">Français</span>' in reply.text, "a language's name is marked as that language"
    assert accounts_of(unit).get("kofi")["language"] == "fr"
    refused = admin.post("/admin/language", data={"username": "kofi", "language": "de", "csrf_token": csrf_of(page)})
    assert refused.status_code == 422 and accounts_of(unit).get("kofi")["language"] == "fr"
    added = admin.post("/admin/users", data={"username": "wanjiru", "pin": "8642", "pin_again": "8642", "language": "sw",
                                             "csrf_token": csrf_of(page)})
    assert added.status_code == 302 and accounts_of(unit).get("wanjiru")["language"] == "sw"

    worker = app.test_client()
    sign_in_as(worker, "kofi", "2468", query="?lang=hi")   # the sign-in page in Hindi; the account says French
    home = worker.get("/").text
    assert page_language(home) == "fr" and "Nouveau dépistage" in home
    assert accounts_of(unit).get("kofi")["language"] == "fr", "a chosen language is not overwritten at sign-in"


def test_a_wrong_pin_is_said_with_the_plural_of_the_language(unit, app):
    accounts_of(unit).set_language("joseph", "")
    client = app.test_client()
    token = csrf_of(client.get("/signin?lang=es").text)
    wrong = client.post("/signin", data={"user": "joseph", "pin": "0000", "csrf_token": token})
    assert wrong.status_code == 401 and "Quedan 4 intentos antes de que se bloquee la cuenta." in wrong.text
    for _ in range(2):
        client.post("/signin", data={"user": "joseph", "pin": "0000", "csrf_token": token})
    last = client.post("/signin", data={"user": "joseph", "pin": "0000", "csrf_token": token})
    assert "Queda 1 intento antes" in last.text
    accounts_of(unit).unlock("joseph")


# -- the patient's language -------------------------------------------------------------------------
def _recorded_result(policy: referral.ReferralPolicy) -> dict:
    """A referred eye's result as the pipeline records it: every sentence in English."""
    verdict, reasons = policy.decide(gradable=True, quality_messages=[], vcdr=0.82, probability=0.73)
    return {"gradable": True, "vcdr": 0.82, "glaucoma_probability": 0.73, "referral": verdict,
            "referral_headline": referral.HEADLINE[verdict], "referral_reasons": reasons, "advice": referral.ADVICE[verdict],
            "progression": {"verdict": progression.PROGRESSING, "message": progression.MESSAGES[progression.PROGRESSING],
                            "compared_with": "2024-03-04T09:30:00+00:00", "vcdr_then": 0.61, "vcdr_now": 0.82}}


def _finished_visit(unit, identifier: str, language: str | None) -> str:
    visits = unit.visits
    visits.add_patient(identifier, name="Achieng Otieno", year_of_birth=1950, sex="F", consent=True, language=language)
    visit = visits.start_visit(identifier, operator="amina", device_id="test-unit")
    capture = visits.add_capture(visit, "right", unit.capture.latest_jpeg(), quality={"gradable": True})
    visits.add_result(capture, _recorded_result(referral.ReferralPolicy()))
    visits.skip_eye(visit, "left", SKIP_REASONS["declined"])
    visits.finalize_visit(visit)
    return visit


def test_registration_keeps_the_patients_language_defaulting_to_the_workers(unit, app):
    accounts_of(unit).set_language("amina", "hi")
    client = app.test_client()
    sign_in_as(client, "amina", PIN)
    form = client.get("/patients/new").text
    assert re.search(r'<option value="hi" lang="hi" selected>', form), "the worker's language is offered first"
    base = {"name": "Baraka", "year_of_birth": "1961", "sex": "M", "consent": "yes", "csrf_token": csrf_of(form)}
    assert client.post("/patients/new", data=base | {"identifier": "LANG-SW", "language": "sw"}).status_code == 302
    assert client.post("/patients/new", data=base | {"identifier": "LANG-HI"}).status_code == 302
    assert unit.visits.get_patient("LANG-SW")["language"] == "sw"
    assert unit.visits.get_patient("LANG-HI")["language"] == "hi"
    assert "Kiswahili" in client.get("/patients/LANG-SW").text


def test_the_slip_is_in_the_patients_language_and_the_kiosk_in_the_workers(unit, app):
    accounts_of(unit).set_language("amina", "hi")
    visit = _finished_visit(unit, "SLIP-SW", "sw")
    client = app.test_client()
    sign_in_as(client, "amina", PIN)
    page = client.get(f"/visits/{visit}/slip").text
    assert page_language(page) == "hi"
    slip = re.search(r'<article class="slip" id="slip" lang="(\w+)">(.*?)</article>', page, re.S)
    assert slip.group(1) == "sw"
    assert "Mpeleke kwa daktari wa macho" in slip.group(2) and "Leta karatasi hii." in slip.group(2)
    assert "Mgonjwa hakutaka jicho hili lipigwe picha" in slip.group(2)   # the skip reason, recorded in English
    assert format_decimal(0.82, "0.00", locale="sw") in slip.group(2)
    assert not DEVANAGARI.search(slip.group(2)), "nothing of the worker's language on the patient's slip"
    outside = page.replace(slip.group(0), "")
    assert "प्रिंट करें" in outside and 'पर्ची <span lang="sw">Kiswahili</span> में है' in outside   # the worker's language
    result = client.get(f"/visits/{visit}").text
    assert page_language(result) == "hi" and "आँखों के डॉक्टर के पास भेजें" in result


def test_a_patient_without_a_recorded_language_gets_the_slip_in_the_workers(unit, app):
    accounts_of(unit).set_language("amina", "fr")
    visit = _finished_visit(unit, "SLIP-NONE", None)
    client = app.test_client()
    sign_in_as(client, "amina", PIN)
    page = client.get(f"/visits/{visit}/slip").text
    assert 'lang="fr"' in page and "Adresser à un ophtalmologue" in page and 'id="slip-language"' not in page


# -- what the unit recorded, said in the reader's language ------------------------------------------
RECORDED = (list(quality.MESSAGES.values()) + list(progression.MESSAGES.values()) + list(referral.HEADLINE.values())
            + list(referral.ADVICE.values()) + list(SKIP_REASONS.values()) + list(CANCEL_REASONS.values())
            + [referral.NO_DISC_FOUND] + list(referral.OPINION_WORDS.values()))


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_sentence_the_unit_records_is_said_in_the_readers_language(app, language):
    with app.test_request_context("/"):
        assert [said(text) for text in RECORDED] == RECORDED, "English is shown as recorded"
        with languages.in_language(language):
            untranslated = [text for text in RECORDED if said(text) == text]
            assert not untranslated, untranslated
            reasons = referral.ReferralPolicy().decide(gradable=True, quality_messages=[], vcdr=0.82, probability=0.73)[1]
            shown = [said(r) for r in reasons]
            assert len(shown) == 2 and not set(shown) & set(reasons)
            assert format_percent(0.73, locale=language) in shown[0] and format_percent(0.5, locale=language) in shown[0]
            assert format_decimal(0.82, "0.00", locale=language) in shown[1]
            free = CANCELLED.format(reason="the bus came early")
            assert said(free) != free and said(free).endswith("the bus came early"), "words a worker typed stay as typed"
            assert said("Something an older release wrote") == "Something an older release wrote"
            refusal = registration.TOO_FEW_MATCHES.format(matches=9, needed=25)   # why two visits could not be compared
            assert said(refusal) != refusal and "9" in said(refusal) and "25" in said(refusal)


def test_figures_and_days_are_written_the_readers_way(app):
    with app.test_request_context("/"):
        with languages.in_language("fr"):
            assert languages.local_date("2025-03-04T12:00:00+00:00") == "4 mars 2025"
            assert languages.ratio(0.72) == "0,72" and languages.percent(0.73) == format_percent(0.73, locale="fr")
            assert languages.day(dt.date(2025, 3, 25), "long") == "25 mars 2025"
        with languages.in_language("hi"):
            assert "मार्च" in languages.local_date("2025-03-04T12:00:00+00:00")
        with languages.in_language("en"):
            assert languages.local_date("2025-03-04T12:00:00+00:00") == "4 Mar 2025" and languages.ratio(0.72) == "0.72"


def test_the_capture_instruction_comes_in_the_workers_language(unit, app):
    accounts_of(unit).set_language("amina", "hi")
    client = app.test_client()
    sign_in_as(client, "amina", PIN)
    state = client.get("/capture/state").json
    assert DEVANAGARI.search(state["instruction"]), state["instruction"]


def test_every_page_carries_its_scripts_words_in_its_language(app):
    page = app.test_client().get("/signin?lang=hi").text
    block = re.search(r'<script type="application/json" id="kiosk-words">(.*?)</script>', page, re.S).group(1)
    words = json.loads(block)
    assert words["Done"] == "हो गया" and words["The unit is not answering. Wait a moment."] == "मशीन जवाब नहीं दे रही। थोड़ा रुकें।"


def test_the_unit_installs_the_fonts_the_kiosk_names():
    """Without a Devanagari font a Hindi name is a row of empty boxes."""
    css = (REPO / "device" / "kiosk" / "static" / "kiosk.css").read_text()
    assert 'font-family: "Noto Sans", "Noto Sans Devanagari"' in css
    for board in ("pi", "jetson"):
        assert "fonts-noto-core" in packages(dry_run(board)), board


def test_the_keyboard_is_shipped_with_its_licence_and_fetches_nothing():
    static = REPO / "device" / "kiosk" / "static"
    for package in ("simple-keyboard", "simple-keyboard-layouts"):
        assert "MIT License" in (static / "vendor" / package / "LICENSE").read_text()
    script = (static / "keyboard.js").read_text()
    imported = re.findall(r'^import .* from "([^"]+)";', script, re.M)
    assert imported and all(path.startswith("./vendor/") and (static / path).is_file() for path in imported), imported
    assert "http" not in "".join(imported)


# -- every page, and what the layers below the kiosk say ---------------------------------------------
# Words that are the same in every language the kiosk speaks: the brand, units and the names of standards and
# products (a Hindi page writes "PACS" and "USB" as they are).
SAME_IN_EVERY_LANGUAGE = {"GlaucoScreen", "PACS", "DICOM", "USB", "PIN", "EHR", "GB", "MB", "KB", "ms", "ONNX", "Runtime",
                          "TensorRT", "INT", "FP", "CPU", "GPIO", "Python", "mW", "mJ", "cm"}
# a file's name or kind, a setting's name and a visit's UUID are written as they are too
AS_WRITTEN = re.compile(r"[\w-]*\.(?:csv|json|tar|onnx|toml)\b|\b[a-z]+(?:_[a-z]+)+\b"
                        r"|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
WORD = re.compile(r"[^\W\d_]+")   # a word of any script: "notés" is not "not"
# Words that no sentence of Swahili, Spanish or French holds, and most English sentences do: how an English
# sentence shows itself on a page in a language of Latin script.
ENGLISH_ONLY = {"the", "and", "is", "are", "of", "to", "with", "this", "not", "be", "was", "were", "for", "from", "that",
                "your", "you", "please", "could", "must", "there", "here", "been"}


def foreign_words(page: str, names: set[str]) -> list[str]:
    """The English on a page in another language, outside what is marked as English (what a part of the unit
    reported for the IT person): on a Hindi page every Latin word but names and SAME_IN_EVERY_LANGUAGE; on a page in
    a Latin script, the words only English sentences use."""
    page = AS_WRITTEN.sub(" ", page)
    if page_language(page) == "hi":
        return english_words(page, names | SAME_IN_EVERY_LANGUAGE)
    parser = _Visible()
    parser.feed(page)
    own = [text for lang, text in parser.words if lang == page_language(page)]
    return [w for text in own for w in WORD.findall(html.unescape(text)) if w.lower() in ENGLISH_ONLY]


def names_in(unit) -> set[str]:
    """The accounts' and the patients' names and clinic numbers: written as they are in every language."""
    rows = unit.visits.db.execute("SELECT identifier, name FROM patients").fetchall()
    words = {w for identifier, name in rows for w in LATIN_WORD.findall(f"{identifier} {name or ''}")}
    return words | {u["username"] for u in accounts_of(unit).list()}


def kiosk_tour(unit, client, monkeypatch) -> list[tuple[str, str]]:
    """Every page of the kiosk as a signed-in administrator sees it (a finished visit, an open one), and the pages a
    refusal leads to: a settings form with every kind of wrong value, a visit to the eye clinic that cannot be
    recorded, and the storage page of a full disk."""
    n = len(unit.visits.find_patients("TOUR", limit=100)) + 1
    finished = _finished_visit(unit, f"TOUR-{n}", "sw")
    unit.visits.add_patient(f"OPEN-{n}", name="Zawadi Achieng", year_of_birth=1970, sex="F", consent=True)
    open_visit = unit.visits.start_visit(f"OPEN-{n}", operator="amina", device_id="test-unit")
    patient = unit.visits.get_visit(finished)["patient"]["identifier"]
    shown = []
    for path in ("/", "/patients/new", "/patients?q=TOUR", f"/patients/{patient}", f"/visits/{finished}",
                 f"/visits/{finished}/slip", f"/visits/{open_visit}/eye/right", f"/visits/{open_visit}/eye/right/skip",
                 f"/visits/{open_visit}/cancel", "/referred?show=all", "/patients/NOBODY", "/admin/", "/admin/sync",
                 "/admin/models", "/admin/devices", "/admin/settings/", "/admin/storage", "/admin/export/",
                 f"/admin/patients/edit?patient={patient}", "/nowhere"):
        shown.append((path, client.get(path).text))
    token = csrf_of(shown[0][1])
    refused = client.post("/admin/settings/", data={
        "csrf_token": token, "quality.min_focus": "5", "quality.max_disc_offset": "2", "capture.max_led_level": "2",
        "capture.consecutive_gradable": "three", "capture.target_brightness": "", "quality.min_exposure": "x"})
    assert refused.status_code == 422
    shown.append(("settings refused", refused.text))
    shown.append(("attendance refused", client.post(f"/referred/{open_visit}/attended", data={"csrf_token": token},
                                                    follow_redirects=True).text))
    monkeypatch.setattr(unit.visits, "min_free_bytes", 2**62)  # the unit's own limit, above any disk: the disk is full
    full = client.post("/patients/new", data={"identifier": f"FULL-{n}", "name": "Abena", "year_of_birth": "1966", "sex": "F",
                                              "consent": "yes", "csrf_token": token})
    monkeypatch.undo()
    assert full.status_code == 507
    shown.append(("storage full", full.text))
    return shown


@pytest.mark.parametrize("language", TRANSLATED)
def test_every_page_and_refusal_is_in_the_workers_language(unit, app, monkeypatch, language):
    """No English sentence on any page, nor in what the settings, the visit log or a full disk refuse; what a part of
    the unit says for the IT person is marked as English (lang="en") and not counted."""
    accounts_of(unit).set_language("amina", language)
    client = app.test_client()
    sign_in_as(client, "amina", PIN)
    problems = {}
    tour = kiosk_tour(unit, client, monkeypatch)
    names = names_in(unit) | {"NOBODY"}
    for name, page in tour:
        assert page_language(page) == language, name
        if foreign_words(page, names):
            problems[name] = foreign_words(page, names)
    assert not problems, problems


def test_the_check_finds_english_where_there_is_some(unit, app):
    """The check above can fail: an English page is all English words to it, on a Hindi page or a French one."""
    client = app.test_client()
    english = client.get("/signin?lang=en").text
    assert {"Who", "are", "you"} <= set(foreign_words(english.replace('lang="en"', 'lang="hi"', 1), set()))
    assert {"are", "you"} <= set(foreign_words(english.replace('lang="en"', 'lang="fr"', 1), set()))


def test_a_broken_camera_is_said_in_the_workers_language_with_its_own_words_for_the_it_person(tmp_path):
    """The camera's own error (English, for the person who looks after the unit) is shown apart and marked English;
    the page around it, and the home page's list of problems, are in Hindi."""
    unit = make_unit(tmp_path / "unit")
    try:
        add_workers(unit)
        accounts_of(unit).set_language("amina", "hi")
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        sign_in_as(client, "amina", PIN)
        unit.visits.add_patient("CAM-1", name="Asha", consent=True)
        visit = unit.visits.start_visit("CAM-1", operator="amina", device_id="test-unit")
        unit.camera.simulate_disconnect()
        deadline = time.monotonic() + 10
        while not unit.capture.state()["error"] and time.monotonic() < deadline:
            time.sleep(0.05)
        error = unit.capture.state()["error"]
        assert error
        names = names_in(unit)
        page = client.get(f"/visits/{visit}/eye/right")
        assert page.status_code == 503 and foreign_words(page.text, names) == []
        detail = re.search(r'<p class="detail muted" id="error-detail">(.*?)</p>', page.text, re.S).group(1)
        assert DEVANAGARI.search(detail) and f'<span lang="en">{escape(error)}</span>' in detail
        home = client.get("/").text
        assert foreign_words(home, names) == [] and '<span lang="en">' in home
    finally:
        unit.close()


@pytest.mark.parametrize("language", TRANSLATED)
def test_what_a_layer_below_the_kiosk_refuses_is_said_in_the_readers_language(tmp_path, app, language):
    """The settings' ranges, the visit log's refusals: English templates there, said here with their figures."""
    with VisitLog(tmp_path / "visits") as visits:
        visits.add_patient("R-1", name="Amina", consent=True)
        visits.add_patient("R-2", name="Baraka", consent=True)
        visit = visits.start_visit("R-1", operator="amina", device_id="test-unit")
        visits.skip_eye(visit, "right", SKIP_REASONS["declined"])
        visits.skip_eye(visit, "left", SKIP_REASONS["declined"])
        visits.finalize_visit(visit)
        refusals = []
        for call in (lambda: visits.mark_attended(visit, on=dt.date.today(), by="amina"),
                     lambda: visits.edit_patient("R-1", by="amina", new_identifier="R-2")):
            with pytest.raises(ValueError) as refused:
                call()
            refusals.append(str(refused.value))
    cfg = Config(data_dir=tmp_path / "unit", device_id="test-unit", simulate=True)
    with pytest.raises(SettingsError) as settings:
        check_overrides(cfg, {"capture": {"consecutive_gradable": "99", "max_led_level": "5", "target_brightness": "0.9"},
                              "quality": {"min_focus": "1.5", "max_disc_offset": "3", "min_red_ratio": "9", "min_exposure": ""}})
    refusals += settings.value.problems.values()
    with pytest.raises(SettingsError) as settings:
        check_overrides(cfg, {"capture": {"target_brightness": "0.5", "consecutive_gradable": "three"},
                              "quality": {"max_brightness": "0.4", "min_focus": "x"}})
    refusals += settings.value.problems.values()
    assert len(refusals) == 12
    with app.test_request_context("/"):
        assert [said(r) for r in refusals] == refusals, "English is shown as the layer said it"
        with languages.in_language(language):
            shown = [said(r) for r in refusals]
    untranslated = [r for r, s in zip(refusals, shown) if s == r]
    assert not untranslated, untranslated
    # the visit's UUID is no sentence: its hex digits spell "be" or "ad" now and then
    english = [s for s in shown if {w.lower() for w in WORD.findall(s.replace(visit, " "))} & ENGLISH_ONLY]
    assert not english, english
    assert any(str(MAX_CONSECUTIVE_GRADABLE) in s for s in shown) and any("0.4" in s for s in shown), "the figures stay"
    if language == "hi":
        assert all(DEVANAGARI.search(s) for s in shown)
        leftover = [w for s in shown for w in LATIN_WORD.findall(AS_WRITTEN.sub(" ", s))]
        assert not leftover, leftover


def test_the_export_counts_its_visits_with_the_plural_of_the_language(app):
    with app.test_request_context("/"):
        assert progress_words({"done": 1, "total": None}) == "1 visit written so far. Do not pull the stick out."
        assert progress_words({"done": 2, "total": None}) == "2 visits written so far. Do not pull the stick out."
        with languages.in_language("fr"):   # French counts 0 and 1 alike
            assert progress_words({"done": 0, "total": None}).startswith("0 visite écrite")
            assert progress_words({"done": 2, "total": None}).startswith("2 visites écrites")


# -- the records ------------------------------------------------------------------------------------
def test_the_visit_log_keeps_a_patients_language(tmp_path):
    with VisitLog(tmp_path / "unit") as visits:
        assert visits.add_patient("VL-1", name="Amina", language="SW")["language"] == "sw"
        assert visits.add_patient("VL-2", name="Old registration")["language"] is None
        visits.edit_patient("VL-1", by="amina", name="Amina Said")   # no language given: kept
        assert visits.get_patient("VL-1")["language"] == "sw"
        visits.edit_patient("VL-1", by="amina", name="Amina Said", language="hi")
        assert visits.get_patient("VL-1")["language"] == "hi"
        assert visits.patient_edits("VL-1")[0]["changes"] == {"language": ["sw", "hi"]}
        with pytest.raises(ValueError, match="two- or three-letter code"):
            visits.add_patient("VL-3", language="Kiswahili!")
        assert visits.get_patient("VL-3") is None


def test_an_account_language_must_be_a_language_code(tmp_path):
    accounts = Accounts(tmp_path / "accounts.db")
    accounts.add("amina", PIN, language="hi")
    assert accounts.get("amina")["language"] == "hi"
    with pytest.raises(ValueError, match="two- or three-letter code"):
        accounts.set_language("amina", "Hindi")
    with pytest.raises(LookupError):
        accounts.set_language("nobody", "sw")


@pytest.mark.parametrize("language", TRANSLATED)
def test_the_calibrations_state_and_a_stopped_light_are_said_in_the_readers_language(app, language):
    """What the unit says of its optical calibration (none, another module's, stale, unreadable) and why the lights
    stopped for an eye: English where recorded, the reader's language where shown, the figures kept."""
    from device.capture import calibration
    from device.capture.loop import LIGHT_STOPPED

    recorded = [calibration.NONE, calibration.OTHER_MODULE.format(calibrated="GSO-0042", module="GSO-SIM-0001"),
                calibration.STALE.format(days="200", limit="90"),
                calibration.UNREADABLE.format(reason="calibration.json cannot be read"), LIGHT_STOPPED]
    with app.test_request_context("/"):
        assert [said(text) for text in recorded] == recorded
        with languages.in_language(language):
            shown = [said(text) for text in recorded]
    assert not [s for s, r in zip(shown, recorded) if s == r]
    assert "GSO-0042" in shown[1] and "GSO-SIM-0001" in shown[1] and "200" in shown[2] and "90" in shown[2]
    assert "calibration.json cannot be read" in shown[3]
    own_words = shown[:3] + shown[4:]  # the unreadable file's reason is the IT person's detail, as it comes
    assert not [s for s in own_words if {w.lower() for w in WORD.findall(s)} & ENGLISH_ONLY]
