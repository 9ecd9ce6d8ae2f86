"""`python -m device.lab.bench_kiosk`: how long a health worker's straight visit takes at the kiosk, and
whether every page of it fits the unit's screen.

The targets: from sign-in to a result for both eyes in under 60 s of wall time in simulation, and
every page usable at 800x480 without sideways scrolling, with touch targets at least 44 px. Timed
tests would only be noise on a shared 2-core machine, so this measures and reports instead.

It builds the unit as `glaucoscreen run --simulate` does (optic module on a pseudo-terminal,
gpiozero's mock pins, a synthetic eye, the shipped ONNX models, the capture loop running), in a
fresh data directory of its own, serves the kiosk with waitress and drives Debian's Chromium,
headless, through Playwright. Each run is one visit in a fresh browser context, with its own
patient (so its own simulated eyes, the same ones in every campaign): choose the name, type the
PIN on the on-screen keypad, "New screening", register with consent, wait on the right eye's page
until auto-capture takes the photo and the screening is done, the same for the left eye, then the
result page with both eyes' photos shown. The visit is then finished (the slip), outside the clock.

Each step ends when the browser commits the next page, so that page's loading belongs to the next
step, and the last one ends when the headline and both eyes' photos are on the screen:

* sign_in: tap the name, the PIN on the keypad, "Sign in", until the home page comes;
* register: the home page, "New screening", the form filled and sent, until the right eye's page;
* right_eye / left_eye: the capture page's live view until auto-capture takes the photo, then the
  screening of that photo, until the next page comes;
* result: the result page until its headline and both eyes' photos are shown.

Typing takes no time here, so the figures are the unit's share of a visit plus the simulated
patient's alignment (the simulated worker brings the eye into line as a person would); a real
worker adds their own typing and aiming. Layout checks on the pages inside the clock take a few
milliseconds each; the run reports their sum as `checks_s`.

On every page visited it measures `document.scrollingElement.scrollWidth` against the window's
width and the height and width of every visible touch target (buttons, links styled as buttons,
the bar's and the admin pages' links, choice tiles, the consent box, selects and text inputs;
radio buttons and checkboxes count through the tiles they sit in).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import waitress

from device.accounts import Accounts
from device.config import Config
from device.kiosk import create_app
from device.kiosk.outcome import visit_outcome
from device.unit import Unit
from device.visits.datadir import DataDir
from device.visits.visitlog import EYES

TARGET_S = 60.0
MIN_TARGET_PX = 44
DEFAULT_SIZE = (800, 480)
STEPS = ("sign_in", "register", "right_eye", "left_eye", "result")
PAGES = ("signin", "home", "register", "capture-right", "capture-left", "result", "slip")
EYE_TIMEOUT_S = 120.0  # a photo never taken ends the run, with what the page said
CHROMIUM = Path("/usr/bin/chromium")  # Debian's, as on the unit: the kiosk never downloads a browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The worker who screens, and a colleague, so the sign-in page shows a choice of names as in a clinic.
WORKERS = (("amina", "4829"), ("joseph", "1357"))
HEADLINES = ("Refer to an eye doctor", "Take the photo again", "No glaucoma signs seen")

# every visible thing a finger has to hit; radio buttons and checkboxes sit inside tiles that are measured instead
TARGETS_SELECTOR = ("button, .button, .bar-button, nav a, .tile, .consent, select, "
                    "input:not([type=radio]):not([type=checkbox]):not([type=hidden])")
LAYOUT_JS = """(selector) => {
  const page = document.scrollingElement || document.documentElement;
  const targets = [...document.querySelectorAll(selector)]
    .filter(e => e.offsetParent !== null)
    .map(e => { const r = e.getBoundingClientRect();
                return {name: (e.textContent || e.name || e.tagName).trim().replace(/\\s+/g, ' ').slice(0, 40),
                        height: Math.round(r.height * 10) / 10, width: Math.round(r.width * 10) / 10}; });
  return {scroll_width: page.scrollWidth, inner_width: window.innerWidth, targets: targets};
}"""
RESULT_SHOWN_JS = """(eyes) => !!document.getElementById('headline') && eyes.every(eye => {
  const photos = [...document.querySelectorAll('#eye-' + eye + ' img.photo')];
  return photos.length > 0 && photos.every(i => i.complete && i.naturalWidth > 0);
})"""


class VisitFailed(Exception):
    """A run that did not reach the result with both eyes screened, and why."""


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or int(m.group(1)) < 200 or int(m.group(2)) < 200:
        raise argparse.ArgumentTypeError(f"a screen size is WIDTHxHEIGHT in pixels, e.g. 800x480 (not {text!r})")
    return int(m.group(1)), int(m.group(2))


# -- the unit and the browser ------------------------------------------------------------------------
@contextlib.contextmanager
def simulated_kiosk(data_dir: Path) -> Iterator[tuple[str, Unit]]:
    """The unit in simulation with its kiosk served by waitress on a free port of 127.0.0.1."""
    config = Config(data_dir=data_dir, device_id="kiosk-bench", simulate=True)
    unit = Unit.from_config(config)
    try:
        if unit.pipeline is None:
            raise VisitFailed(f"the screening models did not load: {unit.model_error}")
        unit.start()
        accounts = Accounts(DataDir(data_dir).accounts_db)
        for name, pin in WORKERS:
            accounts.add(name, pin)
        server = waitress.create_server(create_app(unit), host="127.0.0.1", port=0, threads=config.kiosk.threads)
        thread = threading.Thread(target=server.run, name="kiosk-server", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.effective_port}", unit
        finally:
            server.close()
            thread.join(timeout=5)
    finally:
        unit.close()


@contextlib.contextmanager
def headless_chromium(executable: Path = CHROMIUM):
    if not executable.exists():
        raise VisitFailed(f"Chromium is not installed at {executable}: run `./install.sh --dev`, which installs "
                          "Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


# -- measuring ---------------------------------------------------------------------------------------
def check_layout(page, name: str) -> dict:
    """Sideways scrolling and the smallest touch target of the page now shown, as the worker's screen has it."""
    began = None
    try:
        page.wait_for_load_state("load")  # the worker waits for it anyway: only the measuring is counted
        began = time.monotonic()
        seen = page.evaluate(LAYOUT_JS, TARGETS_SELECTOR)
    except Exception as exc:  # noqa: BLE001 - a page that left while measured is reported, not fatal
        return {"page": name, "error": str(exc).splitlines()[0],
                "seconds": 0.0 if began is None else round(time.monotonic() - began, 3)}
    targets = seen["targets"]
    small = [t for t in targets if min(t["height"], t["width"]) < MIN_TARGET_PX]
    return {
        "page": name,
        "path": re.sub(r"^https?://[^/]+", "", page.url),
        "scroll_width": seen["scroll_width"],
        "inner_width": seen["inner_width"],
        "fits": seen["scroll_width"] <= seen["inner_width"],
        "targets": len(targets),
        "smallest_target": min(targets, key=lambda t: min(t["height"], t["width"]), default=None),
        "small_targets": small,
        "targets_ok": not small,
        "seconds": round(time.monotonic() - began, 3),
    }


class PhotoWatch:
    """Notes the moment the capture loop takes this eye's photo: the page only shows it after its next
    poll, and the loop's account of the capture is reset once the next eye's page arms it again."""

    def __init__(self, unit: Unit, eye: str):
        self.unit, self.eye = unit, eye
        self.taken_at: float | None = None
        self.trace: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"photo-watch-{eye}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            trace = self.unit.capture.trace()
            if trace.get("eye") == self.eye and "manual" in trace:
                self.taken_at, self.trace = time.monotonic(), trace
                return
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def capture_eye(page, unit: Unit, eye: str, arrived: float, next_page: re.Pattern, timeout_s: float,
                pages: list) -> tuple[float, dict]:
    """Wait on the eye's capture page, hands off, until the next page comes; when it came and how the photo was taken."""
    watch = PhotoWatch(unit, eye)
    try:
        pages.append(check_layout(page, f"capture-{eye}"))
        try:
            page.wait_for_url(next_page, wait_until="commit", timeout=timeout_s * 1000)
        except Exception as exc:  # noqa: BLE001 - Playwright's timeout: say what the worker was told
            state = unit.capture.state()
            raise VisitFailed(f"the {eye} eye was not captured and screened within {timeout_s:g} s "
                              f"(the page said {state.get('instruction')!r}, error {state.get('error')!r}): "
                              f"{str(exc).splitlines()[0]}") from None
        left_at = time.monotonic()
    finally:
        watch.stop()
    trace = watch.trace or {}
    return left_at, {
        "auto_capture": trace.get("manual") is False,
        "capture_loop_s": trace.get("seconds_to_capture"),
        "frames": trace.get("frames"),
        "photo_after_s": None if watch.taken_at is None else round(watch.taken_at - arrived, 2),
        "screened_after_photo_s": None if watch.taken_at is None else round(left_at - watch.taken_at, 2),
    }


def one_visit(browser, base: str, unit: Unit, run: int, size: tuple[int, int],
              eye_timeout_s: float = EYE_TIMEOUT_S) -> dict:
    """One health worker's straight visit in a fresh browser context; its times, eyes and pages."""
    worker, pin = WORKERS[0]
    identifier = f"BENCH-{run:03d}"
    record: dict = {"run": run, "patient": identifier, "visit": None, "total_s": None, "steps_s": {}, "checks_s": None,
                    "headline": None, "both_eyes_screened": False, "visit_status": None, "eyes": {}, "pages": [],
                    "error": None}
    pages = record["pages"]
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    context.set_default_timeout(30_000)
    page = context.new_page()
    marks: dict[str, float] = {}
    try:
        page.goto(base + "/")
        if "/signin" not in page.url:
            raise VisitFailed(f"the kiosk did not ask for a sign-in (it showed {page.url})")
        pages.append(check_layout(page, "signin"))

        marks["start"] = time.monotonic()
        page.click(f".who-list .tile:has(input[value='{worker}'])")
        for digit in pin:
            page.click(f".keypad [data-key='{digit}']")
        page.click("main button[type=submit]")
        page.wait_for_url(base + "/", wait_until="commit")
        marks["home"] = time.monotonic()

        pages.append(check_layout(page, "home"))
        page.click("a:has-text('New screening')")
        page.wait_for_selector("input[name=identifier]")
        pages.append(check_layout(page, "register"))
        page.fill("input[name=identifier]", identifier)
        page.fill("input[name=name]", f"Bench Patient {run}")
        page.fill("input[name=year_of_birth]", "1958")
        page.click(".tile:has(input[name=sex][value=F])")
        page.click("label.consent")
        page.click("main button[type=submit]")
        page.wait_for_url(re.compile(r"/visits/[0-9a-f-]{36}/eye/right$"), wait_until="commit")
        marks["right_eye"] = time.monotonic()
        record["visit"] = page.url.rsplit("/", 3)[1]

        marks["left_eye"], record["eyes"]["right"] = capture_eye(
            page, unit, "right", marks["right_eye"], re.compile(r"/eye/left$"), eye_timeout_s, pages)
        marks["result"], record["eyes"]["left"] = capture_eye(
            page, unit, "left", marks["left_eye"], re.compile(r"/visits/[0-9a-f-]{36}$"), eye_timeout_s, pages)
        page.wait_for_function(RESULT_SHOWN_JS, arg=list(EYES))
        marks["shown"] = time.monotonic()

        record["headline"] = page.inner_text("#headline")
        pages.append(check_layout(page, "result"))
        page.click("#finish")
        page.wait_for_url(re.compile(r"/slip$"))
        pages.append(check_layout(page, "slip"))
    except VisitFailed as exc:
        record["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - Playwright's errors: the run failed, the campaign goes on
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    finally:
        context.close()
        unit.capture.cancel()

    bounds = ("start", "home", "right_eye", "left_eye", "result", "shown")
    for step, (a, b) in zip(STEPS, zip(bounds, bounds[1:])):
        if a in marks and b in marks:
            record["steps_s"][step] = round(marks[b] - marks[a], 2)
    if "shown" in marks:
        record["total_s"] = round(marks["shown"] - marks["start"], 2)
        record["checks_s"] = round(sum(p["seconds"] for p in pages if p["page"] not in ("signin", "result", "slip")), 3)
    if record["visit"]:
        visit = unit.visits.get_visit(record["visit"])
        record["visit_status"] = visit["status"]
        for e in visit_outcome(visit)["eyes"]:
            s = e["screening"] or {}
            record["eyes"].setdefault(e["eye"], {}).update(status=e["status"], referral=e["referral"], vcdr=s.get("vcdr"))
        record["both_eyes_screened"] = all(record["eyes"][eye].get("status") == "screened" for eye in EYES)
    return record


# -- the campaign ------------------------------------------------------------------------------------
def _spread(values: list[float | None]) -> dict:
    """p50 and max, where a run that failed counts as infinitely slow (None where it decides the figure)."""
    if not values:
        return {"p50": None, "max": None}
    v = [math.inf if x is None else x for x in values]
    p50, top = statistics.median_high(v), max(v)
    return {"p50": round(p50, 2) if math.isfinite(p50) else None, "max": round(top, 2) if math.isfinite(top) else None}


def _layout_summary(visits: list[dict]) -> dict:
    checked = [p for v in visits for p in v["pages"] if "error" not in p]
    unchecked = sorted({f"{p['page']} ({p['error']})" for v in visits for p in v["pages"] if "error" in p})
    sideways = sorted({p["page"] for p in checked if not p["fits"]})
    with_small = sorted({p["page"] for p in checked if not p["targets_ok"]})
    smallest = min(((p["page"], p["smallest_target"]) for p in checked if p["smallest_target"]),
                   key=lambda pt: min(pt[1]["height"], pt[1]["width"]), default=None)
    per_page = {}
    for name in PAGES:
        seen = [p for p in checked if p["page"] == name]
        if seen:
            low = min((p["smallest_target"] for p in seen if p["smallest_target"]),
                      key=lambda t: min(t["height"], t["width"]), default=None)
            per_page[name] = {"checked": len(seen), "max_scroll_width": max(p["scroll_width"] for p in seen),
                              "inner_width": min(p["inner_width"] for p in seen), "smallest_target": low,
                              "small_targets": sorted({t["name"] for p in seen for t in p["small_targets"]})}
    return {
        "pages_checked": len(checked),
        "pages_not_checked": unchecked,
        "pages_scrolling_sideways": sideways,
        "pages_with_small_targets": with_small,
        "smallest_target": None if smallest is None else {"page": smallest[0], **smallest[1]},
        "per_page": per_page,
        "ok": bool(checked) and not (unchecked or sideways or with_small),
    }


def run(runs: int = 3, size: tuple[int, int] = DEFAULT_SIZE, json_out: Path | None = None,
        eye_timeout_s: float = EYE_TIMEOUT_S, chromium: Path = CHROMIUM, progress=None) -> dict:
    """`runs` visits on one freshly built unit in simulation, in a temporary data directory."""
    started = time.monotonic()
    visits: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="glaucoscreen-kiosk-bench-") as tmp:
        with simulated_kiosk(Path(tmp) / "data") as (base, unit), headless_chromium(chromium) as browser:
            version = browser.version
            for i in range(1, runs + 1):
                record = one_visit(browser, base, unit, i, size, eye_timeout_s)
                visits.append(record)
                if progress:
                    progress(record)
    completed = [v for v in visits if v["error"] is None and v["both_eyes_screened"] and v["total_s"] is not None]
    totals = [v["total_s"] if v in completed else None for v in visits]
    total = _spread(totals)
    layout = _layout_summary(visits)
    report = {
        "runs": runs,
        "size": f"{size[0]}x{size[1]}",
        "target_s": TARGET_S,
        "min_target_px": MIN_TARGET_PX,
        "completed": len(completed),
        "total_s": total,
        "steps_s": {step: _spread([v["steps_s"].get(step) if v in completed else None for v in visits])
                    for step in STEPS},
        "auto_capture_s": {eye: _spread([v["eyes"][eye].get("capture_loop_s") if v in completed else None
                                         for v in visits]) for eye in EYES},
        "time_target_met": runs > 0 and total["max"] is not None and total["max"] < TARGET_S,
        "layout": layout,
        "target_met": False,
        "chromium": version,
        "wall_s": round(time.monotonic() - started, 1),
        "visits": visits,
    }
    report["target_met"] = report["time_target_met"] and layout["ok"] and len(completed) == runs
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report


# -- what it prints ----------------------------------------------------------------------------------
def _f(x: float | None, width: int = 9) -> str:
    return f"{'-' if x is None else f'{x:.2f}':>{width}}"


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def table(report: dict) -> str:
    head = f"{'run':>4} {'sign-in':>9} {'register':>9} {'right eye':>9} {'left eye':>9} {'result':>9} {'total':>9}  " \
           f"{'auto R/L s':>11}  shown"
    lines = [f"Sign-in to a result for both eyes, wall seconds ({report['size']}, Chromium {report['chromium']})", head]
    for v in report["visits"]:
        auto = "/".join(_f(v["eyes"].get(e, {}).get("capture_loop_s"), 1).strip() for e in EYES)
        shown = v["headline"] if v["error"] is None else f"FAILED: {v['error']}"
        lines.append(f"{v['run']:>4} " + " ".join(_f(v["steps_s"].get(s)) for s in STEPS) + " " + _f(v["total_s"])
                     + f"  {auto:>11}  {shown}")
    for stat in ("p50", "max"):
        auto = "/".join(_f(report["auto_capture_s"][e][stat], 1).strip() for e in EYES)
        lines.append(f"{stat:>4} " + " ".join(_f(report["steps_s"][s][stat]) for s in STEPS) + " "
                     + _f(report["total_s"][stat]) + f"  {auto:>11}")
    lay = report["layout"]
    lines.append("")
    lines.append(f"Layout at {report['size']} (scrollWidth / innerWidth, smallest touch target h x w px):")
    for name, p in lay["per_page"].items():
        t = p["smallest_target"]
        small = f"  UNDER {report['min_target_px']} px: {', '.join(p['small_targets'])}" if p["small_targets"] else ""
        target = f"{t['height']:.0f} x {t['width']:.0f} ({t['name']!r})" if t else "none"
        lines.append(f"  {name:<14} {p['max_scroll_width']:>5} / {p['inner_width']:<5} {target}{small}")
    for missed in lay["pages_not_checked"]:
        lines.append(f"  not checked: {missed}")
    lines.append("")
    lines.append(f"{report['completed']}/{report['runs']} visits reached the result with both eyes screened; "
                 f"sign-in to result p50 {_f(report['total_s']['p50'], 1).strip()} s, max "
                 f"{_f(report['total_s']['max'], 1).strip()} s: target under {report['target_s']:.0f} s "
                 f"{_met(report['time_target_met'])}")
    lines.append(f"no sideways scrolling and touch targets >= {report['min_target_px']} px on "
                 f"{lay['pages_checked']} pages checked: {_met(lay['ok'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m device.lab.bench_kiosk", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="visits, each with its own patient and browser context")
    ap.add_argument("--json-out", type=Path, help="write the figures, every run and every page checked, here")
    ap.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="the screen, WIDTHxHEIGHT (default 800x480)")
    ap.add_argument("--eye-timeout", type=float, default=EYE_TIMEOUT_S,
                    help="seconds on a capture page before the run counts as failed")
    ap.add_argument("--chromium", type=Path, default=CHROMIUM, help="the Chromium to drive (default Debian's)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    def progress(v: dict) -> None:
        took = f"{v['total_s']:.2f} s" if v["total_s"] is not None else "failed"
        print(f"run {v['run']}: {took}  {v['error'] or v['headline']}", file=sys.stderr, flush=True)

    try:
        report = run(args.runs, args.size, args.json_out, args.eye_timeout, args.chromium, progress=progress)
    except VisitFailed as exc:
        print(f"python -m device.lab.bench_kiosk: {exc}", file=sys.stderr)
        return 2
    print(table(report), flush=True)
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
