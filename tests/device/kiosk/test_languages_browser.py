"""The kiosk in five languages in a real Chromium (Debian's, driven by Playwright) against the app served by
waitress, on the real unit in simulation (issue 18): a health worker's visit in Hindi (a name typed in
Devanagari on the on-screen keyboard, the slip printed in the patient's Swahili) and one in Swahili (an eye
skipped with a reason), and every page in English, Hindi, Swahili, Spanish and French at 800x480, with no
sideways scrolling and every touch target at least 44 px tall; on each, every text field opens the on-screen
keyboard with the keys it needs.

Screenshots of every page in every language land in test-artifacts/screenshots/languages/ for a person
(and a native-speaking reviewer) to look at.
"""
from __future__ import annotations

import re

import pytest
from babel.support import Translations

from device.accounts import Accounts, accounts_path
from device.kiosk.languages import TRANSLATIONS
from device.lab.bench_kiosk import CHROMIUM, CHROMIUM_ARGS, TARGETS_SELECTOR
from device.lab.sync_trials import sample_eyes
from device.screening import quality, referral
from tests.device.kiosk.test_kiosk import PIN
from tests.device.kiosk.test_kiosk_browser import MIN_TARGET_PX, NEVER, SCREENING_TIMEOUT_MS, SHOTS, SMALL, TARGETS_JS, served_kiosk
from tests.device.kiosk.test_languages import DEVANAGARI, _recorded_result

pytestmark = pytest.mark.browser

LANGUAGES = ("en", "hi", "sw", "es", "fr")
LANGUAGE_SHOTS = SHOTS / "languages"
HINDI_HEADLINES = ("आँखों के डॉक्टर के पास भेजें", "फ़ोटो फिर से लें", "ग्लूकोमा के लक्षण नहीं दिखे")
SWAHILI_HEADLINES = ("Mpeleke kwa daktari wa macho", "Piga picha tena", "Hakuna dalili za glakoma")
ENGLISH_INSTRUCTIONS = set(quality.MESSAGES.values()) | {"Starting the camera", "Hold still - taking the photo",
                                                          "Taking the photo - hold still", "Photo taken"}


@pytest.fixture(scope="module")
def kiosk(tmp_path_factory):
    """One unit and its kiosk for the module: the visits and the tour each use patients of their own."""
    with served_kiosk(tmp_path_factory.mktemp("languages-browser")) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `./install.sh --dev`, which installs Debian's chromium "
                    "(the kiosk's browser tests never download a browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": SMALL[0], "height": SMALL[1]})
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


def fits(page, language: str, name: str) -> None:
    """The page is in `language`, fits 800x480 without sideways scrolling, has no touch target under 44 px,
    and is kept as a screenshot."""
    page.wait_for_load_state("load")
    assert page.evaluate("document.documentElement.lang") == language, f"{name} is not in {language}"
    scroll_width, inner_width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert scroll_width <= inner_width, f"{language} {name}: the page scrolls sideways at 800x480 ({scroll_width} > {inner_width} px)"
    small = [(text, round(h)) for text, h in page.evaluate(TARGETS_JS, TARGETS_SELECTOR) if h < MIN_TARGET_PX]
    assert not small, f"{language} {name}: touch targets under {MIN_TARGET_PX} px tall at 800x480: {small}"
    LANGUAGE_SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(LANGUAGE_SHOTS / f"{language}-{name}-{SMALL[0]}x{SMALL[1]}.png"), full_page=True)


# what keyboard.js gives a keyboard: every text field but a PIN with a keypad of its own
TEXT_FIELDS = "input:not([type]), input[type=text], input[type=search], input[type=password], input[type=tel], textarea"
NUMERIC = ("numeric", "tel", "decimal")
# a key of the layout a field should open on: the number pad's 7 (with no q), the English q, Devanagari र, French ù, Spanish ñ
LETTERS = {"en": "q", "sw": "q", "hi": "र", "fr": "ù", "es": "ñ"}


def keyboard_on_every_field(page, language: str, name: str) -> int:
    """Touch every text field of the page: each opens the on-screen keyboard, a number pad for clinic numbers, phone
    numbers, years, PINs and settings, the language's own letters for the rest, and Done closes it. How many fields."""
    fields = page.locator(TEXT_FIELDS)
    touched = 0
    for i in range(fields.count()):
        field = fields.nth(i)
        own_keypad = field.get_attribute("id") and page.locator(f".keypad[data-for='{field.get_attribute('id')}']").count()
        if own_keypad or not field.is_visible() or not field.is_enabled():
            continue
        field.click()
        assert page.is_visible("#osk"), f"{language} {name}: no keyboard for field {i}"
        numeric = field.get_attribute("data-keyboard") == "identifier" or field.get_attribute("inputmode") in NUMERIC
        key = "7" if numeric else LETTERS[language]
        assert page.is_visible(f"#osk [data-skbtn='{key}']"), f"{language} {name}: field {i} opens the wrong keys"
        assert not numeric or not page.is_visible("#osk [data-skbtn='q']"), f"{language} {name}: field {i} is a number"
        page.click("#osk [data-skbtn='{close}']")
        assert not page.is_visible("#osk")
        touched += 1
    return touched


def accounts(unit) -> Accounts:
    return Accounts(accounts_path(unit.config.data_dir))


def sign_in(page, base: str, user: str, pin: str) -> None:
    page.check(f"input[name=user][value={user}]")
    for digit in pin:
        page.click(f".keypad [data-key='{digit}']")
    page.click("main button[type=submit]")
    page.wait_for_url(base + "/")


def instruction_shown(page) -> str:
    """The capture page's instruction once the capture loop has said something of its own: compared with
    what the server wrote into the page, not with what is on screen when asked (the loop may have spoken by then)."""
    language = page.evaluate("document.documentElement.lang")
    starting = Translations.load(TRANSLATIONS, [language]).gettext("Starting the camera")
    page.wait_for_function("(starting) => document.getElementById('instruction').textContent.trim() !== starting",
                           arg=starting)
    return page.inner_text("#instruction")


def test_a_visit_in_hindi_with_the_slip_in_the_patients_swahili(kiosk, page):
    base, unit = kiosk
    accounts(unit).set_language("amina", "")   # her first sign-in decides her language
    unit.config.capture.consecutive_gradable = NEVER   # both eyes are taken with the button

    page.goto(base + "/signin")
    page.click("#language-switch a[lang=hi]")
    page.wait_for_function("document.documentElement.lang === 'hi'")
    fits(page, "hi", "visit-01-signin")
    sign_in(page, base, "amina", PIN)
    assert "नई जाँच" in page.inner_text("main")
    assert accounts(unit).get("amina")["language"] == "hi"

    page.click("text=नई जाँच")
    page.wait_for_url(base + "/patients/new")
    page.click("input[name=identifier]")   # a clinic number opens the number pad
    assert page.is_visible("#osk") and page.is_visible("#osk [data-skbtn='7']")
    for key in "4217":
        page.click(f"#osk [data-skbtn='{key}']")
    page.click("input[name=name]")          # a name opens the Devanagari keys
    for key in ("र", "ा", "म", "{space}", "स", "ि", "ं", "ह"):
        page.click(f"#osk [data-skbtn='{key}']")
    assert page.input_value("input[name=identifier]") == "4217"
    assert page.input_value("input[name=name]") == "राम सिंह"
    fits(page, "hi", "visit-02-register-keyboard")
    page.click("#osk [data-skbtn='{close}']")
    assert not page.is_visible("#osk")
    page.fill("input[name=year_of_birth]", "1957")
    page.check("input[name=sex][value=M]")
    page.select_option("select[name=language]", "sw")
    page.check("input[name=consent]")
    page.click("main button[type=submit]")

    page.wait_for_url(re.compile(r".*/eye/right$"))
    said = instruction_shown(page)
    assert DEVANAGARI.search(said) and said not in ENGLISH_INSTRUCTIONS, said
    assert page.inner_text("h1") == "दाईं आँख"
    fits(page, "hi", "visit-03-capture-right")
    page.click("#press")
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=SCREENING_TIMEOUT_MS)
    instruction_shown(page)
    page.click("#press")
    page.wait_for_url(re.compile(r".*/visits/[0-9a-f-]{36}$"), timeout=SCREENING_TIMEOUT_MS)

    headline = page.inner_text("#headline")
    assert headline in HINDI_HEADLINES, headline
    fits(page, "hi", "visit-04-result")
    page.click("#finish")
    page.wait_for_url(re.compile(r".*/slip$"))
    assert page.get_attribute("#slip", "lang") == "sw"
    assert page.inner_text(".slip-headline") in SWAHILI_HEADLINES
    assert not DEVANAGARI.search(page.inner_text("#slip").replace("राम सिंह", "")), "the slip is the patient's, in Swahili"
    assert page.inner_text("#print") == "प्रिंट करें"
    fits(page, "hi", "visit-05-slip-in-swahili")
    assert unit.visits.get_patient("4217")["language"] == "sw"


def test_a_visit_in_swahili_with_an_eye_skipped(kiosk, page):
    base, unit = kiosk
    accounts(unit).set_language("joseph", "sw")   # as the admin set it
    unit.config.capture.consecutive_gradable = NEVER

    page.goto(base + "/signin")   # the browser asks for English; the account says Swahili
    sign_in(page, base, "joseph", "1357")
    fits(page, "sw", "visit-01-home")
    page.click("text=Uchunguzi mpya")
    page.fill("input[name=identifier]", "KSM-0031")
    page.fill("input[name=name]", "Neema Wanjiku")
    page.fill("input[name=year_of_birth]", "1949")
    page.check("input[name=sex][value=F]")
    assert page.input_value("select[name=language]") == "sw", "the patient's language is the worker's unless chosen"
    page.check("input[name=consent]")
    page.click("main button[type=submit]")

    page.wait_for_url(re.compile(r".*/eye/right$"))
    said = instruction_shown(page)
    assert said not in ENGLISH_INSTRUCTIONS, said
    page.click("#press")
    page.wait_for_url(re.compile(r".*/eye/left$"), timeout=SCREENING_TIMEOUT_MS)
    page.click("text=Ruka jicho hili")
    fits(page, "sw", "visit-02-skip")
    page.check("input[name=reason][value=declined]")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/visits/[0-9a-f-]{36}$"), timeout=SCREENING_TIMEOUT_MS)

    assert page.inner_text("#headline") in SWAHILI_HEADLINES
    assert "Mgonjwa hakutaka jicho hili lipigwe picha" in page.inner_text("#eye-left")
    fits(page, "sw", "visit-03-result")
    page.click("#finish")
    page.wait_for_url(re.compile(r".*/slip$"))
    assert page.get_attribute("#slip", "lang") == "sw" and page.inner_text("#print") == "Chapisha"
    fits(page, "sw", "visit-04-slip")


def _tour_visits(unit, shared_data) -> tuple[str, str]:
    """A finished, referred visit (photo, reasons, progression) and an open one, to show every page with."""
    eye = sample_eyes(shared_data, 1)[0]
    visits = unit.visits
    result = _recorded_result(referral.ReferralPolicy())
    visits.add_patient("TOUR-1", name="Amani Juma", year_of_birth=1956, sex="M", consent=True, phone="0712 000 111",
                       address="Kisumu East")
    finished = visits.start_visit("TOUR-1", operator="amina", device_id="test-unit")
    for side in ("right", "left"):
        capture = visits.add_capture(finished, side, eye.photo_jpeg, quality={"gradable": True})
        visits.add_result(capture, result, masks_png=eye.masks_png)
    visits.finalize_visit(finished)
    visits.add_patient("TOUR-2", name="Zawadi Achieng", year_of_birth=1970, sex="F", consent=True)
    open_visit = visits.start_visit("TOUR-2", operator="amina", device_id="test-unit")
    return finished, open_visit


def test_every_page_fits_the_small_screen_in_every_language(kiosk, page, shared_data):
    base, unit = kiosk
    unit.config.capture.consecutive_gradable = NEVER   # the capture page is looked at, not used
    accounts(unit).set_language("amina", "en")
    finished, open_visit = _tour_visits(unit, shared_data)
    pages = [("signin", "/signin"), ("home", "/"), ("register", "/patients/new"), ("find", "/patients?q=TOUR"),
             ("patient", "/patients/TOUR-1"), ("result", f"/visits/{finished}"), ("slip", f"/visits/{finished}/slip"),
             ("capture", f"/visits/{open_visit}/eye/right"), ("skip", f"/visits/{open_visit}/eye/right/skip"),
             ("cancel", f"/visits/{open_visit}/cancel"), ("referred", "/referred?show=all"), ("not-found", "/patients/NOBODY"),
             ("admin", "/admin/"), ("sending", "/admin/sync"), ("models", "/admin/models"), ("devices", "/admin/devices"),
             ("settings", "/admin/settings/"), ("storage", "/admin/storage"), ("export", "/admin/export/"),
             ("edit-patient", "/admin/patients/edit?patient=TOUR-1")]
    page.goto(base + "/signin")
    sign_in(page, base, "amina", PIN)
    touched = {}
    for language in LANGUAGES:
        touched[language] = 0
        for number, (name, path) in enumerate(pages, start=1):
            page.goto(base + path + ("&" if "?" in path else "?") + f"lang={language}")
            if name == "capture":
                instruction_shown(page)
            fits(page, language, f"{number:02d}-{name}")
            touched[language] += keyboard_on_every_field(page, language, name)
        # a form sent empty says what is missing; the keyboard in the language's own letters
        page.goto(base + "/patients/new")
        page.click("main button[type=submit]")
        page.wait_for_selector(".field-error")
        fits(page, language, "21-register-errors")
        page.click("input[name=name]")
        assert page.is_visible("#osk")
        fits(page, language, "22-register-keyboard")
        keys = page.eval_on_selector_all("#osk .hg-button", "keys => keys.map(k => k.getBoundingClientRect().height)")
        assert keys and min(keys) >= MIN_TARGET_PX
        # a capture page left open in a second tab while the camera went to another eye: its photo is refused
        page.goto(base + f"/visits/{open_visit}/eye/right?lang={language}")
        with page.expect_navigation():
            page.eval_on_selector("#accept", "form => { form.elements.token.value = 'taken-elsewhere'; form.submit(); }")
        assert page.is_visible("#camera-taken-page")
        fits(page, language, "23-camera-taken")
    assert {p.name.split("-")[0] for p in LANGUAGE_SHOTS.glob("*-01-signin-800x480.png")} == set(LANGUAGES)
    # search, registration, Edit details and merge, a reason of one's own, an account's name and PINs, every setting
    assert min(touched.values()) >= 30 and len(set(touched.values())) == 1, touched
