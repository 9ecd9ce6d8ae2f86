"""The kiosk on a full disk (issue 17, item 1): it goes on showing what is recorded, refuses what it cannot
record with the storage page that says what to do, and loses nothing.

Two ways to fill it, both giving the errors SQLite really gives: the visit log's own file capped with
`PRAGMA max_page_count` (SQLITE_FULL, "database or disk is full", from the real library on the real
file), and a real file system that really fills: a small tmpfs, mounted in a user namespace of a child
process so no privilege is needed, with the unit's data on it and a file written until ENOSPC.
"""
from __future__ import annotations

import errno
import html
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device.accounts import MAX_FAILURES
from device.kiosk import create_app
from device.visits.visitlog import VisitLog
from tests.device.kiosk.test_kiosk import PIN, add_workers, csrf_of, make_unit, open_visit, sign_in

REPO = Path(__file__).resolve().parents[3]
COOKIE = "glaucoscreen_session"
STORAGE_PAGE = ("The unit's storage is full", "Let the unit send its visits", "free space")


def storage_page(r) -> bool:
    text = html.unescape(r.text)
    return r.status_code == 507 and all(words in text for words in STORAGE_PAGE) and "Traceback" not in text


def registration(identifier: str, token: str) -> dict:
    return {"identifier": identifier, "name": f"Patient {identifier} Mensah-Achieng", "year_of_birth": "1961",
            "sex": "F", "consent": "yes", "csrf_token": token}


@pytest.fixture
def fresh_unit(tmp_path):
    u = make_unit(tmp_path / "unit")
    add_workers(u)
    yield u
    u.close()


def test_a_visit_log_that_cannot_grow_gives_the_storage_page_and_keeps_every_patient(fresh_unit):
    unit = fresh_unit
    visit = open_visit(unit, "FD-1")
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    sign_in(client)
    token = csrf_of(client.get("/patients/new").text)
    db = unit.visits.db.conn
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")  # not one page more
    registered, refused = [], None
    for n in range(500):  # a clinic registering (and starting a visit for) one patient after another
        r = client.post("/patients/new", data=registration(f"FD-R{n:03d}", token))
        if r.status_code != 302:
            refused = r
            break
        registered.append(f"FD-R{n:03d}")
    assert refused is not None, "500 registrations and the capped file never filled"
    assert registered, "the file was full before the first registration: nothing was tried"
    assert storage_page(refused), (refused.status_code, refused.text[:600])
    assert "was not recorded" in refused.text

    # what is recorded still shows
    for url in ["/", "/patients/FD-1", f"/visits/{visit['uuid']}", f"/images/{visit['photo']}", "/patients?q=FD-R",
                f"/patients/{registered[-1]}", "/admin/", "/admin/storage"]:
        assert client.get(url).status_code == 200, url
    assert "Grace Achieng" in client.get("/patients/FD-1").text

    db.execute("PRAGMA max_page_count = 1073741823")  # space again
    again = VisitLog(unit.config.data_dir)
    try:
        assert again.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for identifier in registered:
            assert again.get_patient(identifier) is not None and len(again.visits_for_patient(identifier)) == 1, identifier
        assert again.get_visit(visit["uuid"])["eyes"]["right"]["captures"] == 1
        assert again.images.get(visit["photo"])
    finally:
        again.close()
    r = client.post("/patients/new", data=registration("FD-AFTER", token))
    assert r.status_code == 302, "once there is space again the kiosk records as before"


# -- a real file system that really fills ------------------------------------------------------------
def _namespaced(root: Path, *command: str) -> list[str]:
    """`command` in a user and mount namespace of its own, with a 24 MiB tmpfs mounted on `root`."""
    script = 'mount -t tmpfs -o size=24m,mode=0700 glaucoscreen-test "$0" && exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(root), *command]


def _tmpfs_or_skip(tmp_path: Path) -> Path:
    root = tmp_path / "disk"
    root.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("util-linux's unshare is not installed: no small file system to fill")
    probe = subprocess.run(_namespaced(root, "true"), capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here to mount a small tmpfs in ({probe.stderr.strip()})")
    return root


def fill(root: Path) -> Path:
    """Write a file until the file system says ENOSPC, down to its last byte."""
    filler = root / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (2**20, 2**16, 2**12, 2**9, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return filler


def full_disk_scenario(root: str) -> dict:
    """Run in the child, with `root` a 24 MiB tmpfs: a unit records a visit, a worker is signed in (and
    someone copied their cookie), then the disk fills. What each step answers, for the test to judge."""
    disk = Path(root)
    unit = make_unit(disk / "unit")
    unit.visits.min_free_bytes = 2**20  # this small disk's margin; a unit's is 200 MiB
    seen: dict = {}
    try:
        add_workers(unit)
        visit = open_visit(unit, "FD-1")
        app = create_app(unit, secret_key=b"k" * 32, testing=True)
        worker = app.test_client()
        sign_in(worker)
        copy = app.test_client()
        copy.set_cookie(COOKIE, worker.get_cookie(COOKIE).value)
        token = csrf_of(worker.get("/").text)

        filler = fill(disk)
        seen["free_bytes"] = shutil.disk_usage(disk).free
        urls = ["/", "/patients/FD-1", f"/visits/{visit['uuid']}", f"/images/{visit['photo']}", "/patients?q=FD", "/admin/",
                "/capture/state"]
        seen["pages"] = {url: worker.get(url).status_code for url in urls}
        seen["shows_the_patient"] = "Grace Achieng" in worker.get("/patients/FD-1").text
        seen["home_says_storage"] = "Storage nearly full" in worker.get("/").text
        r = worker.post("/visits", data={"patient": "FD-1", "csrf_token": token})
        seen["new_visit"] = {"status": r.status_code, "storage_page": storage_page(r)}
        r = worker.post("/patients/new", data=registration("FD-2", token))
        seen["new_patient"] = {"status": r.status_code, "storage_page": storage_page(r)}

        other = app.test_client()  # another worker signs in on the full disk
        seen["sign_in"] = [sign_in(other, "joseph", "1357").status_code, other.get("/patients/FD-1").status_code]
        guesser = app.test_client()  # the lock still holds, though the count cannot be written
        seen["guesses"] = [sign_in(guesser, "kofi", "0000").status_code for _ in range(MAX_FAILURES)]
        seen["right_pin_while_locked"] = sign_in(guesser, "kofi", "2468").status_code
        worker.post("/signout", data={"csrf_token": token})  # and sign-out still ends the copied cookie
        seen["copy_after_sign_out"] = copy.get("/patients/FD-1").status_code
        seen["still_full"] = shutil.disk_usage(disk).free < 2**20

        filler.unlink()
        seen["after"] = {
            "integrity": unit.visits.db.execute("PRAGMA integrity_check").fetchone()[0],
            "visits_of_FD_1": len(unit.visits.visits_for_patient("FD-1")),
            "photo_whole": unit.visits.images.get(visit["photo"]) == unit.visits.images.get(visit["photo"]),
            "captures": unit.visits.get_visit(visit["uuid"])["eyes"]["right"]["captures"],
            "FD_2": unit.visits.get_patient("FD-2") is not None,
            "copy": copy.get("/patients/FD-1").status_code,
            "kofi_right_pin": sign_in(app.test_client(), "kofi", "2468").status_code,
            "amina_again": sign_in(worker, "amina", PIN).status_code,
            "register_again": worker.post("/patients/new", data=registration("FD-3", csrf_of(worker.get("/").text))).status_code,
        }
        with sqlite3.connect(unit.config.data_dir / "accounts.db") as db:
            seen["after"]["accounts_integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        unit.close()
    return seen


@pytest.mark.slow
def test_a_disk_that_really_fills(tmp_path):
    root = _tmpfs_or_skip(tmp_path)
    child = "import json, sys; from tests.device.kiosk.test_kiosk_full_disk import full_disk_scenario as s; print(json.dumps(s(sys.argv[1])))"
    out = subprocess.run(_namespaced(root, sys.executable, "-c", child, str(root)), capture_output=True, text=True,
                         timeout=300, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-4000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["free_bytes"] < 4096 and seen["still_full"], seen
    assert all(code == 200 for code in seen["pages"].values()), seen["pages"]
    assert seen["shows_the_patient"] and seen["home_says_storage"]
    assert seen["new_visit"] == {"status": 507, "storage_page": True}
    assert seen["new_patient"] == {"status": 507, "storage_page": True}
    assert seen["sign_in"] == [302, 200]
    assert seen["guesses"] == [401] * (MAX_FAILURES - 1) + [429] and seen["right_pin_while_locked"] == 429
    assert seen["copy_after_sign_out"] == 302
    after = seen["after"]
    assert after["integrity"] == "ok" and after["accounts_integrity"] == "ok"
    assert after["visits_of_FD_1"] == 1 and after["captures"] == 1 and after["photo_whole"]
    assert not after["FD_2"], "a registration refused for want of space leaves nothing behind"
    assert after["copy"] == 302, "the sign-out made on the full disk still holds once there is space"
    assert after["kofi_right_pin"] == 429, "so does the lock"
    assert after["amina_again"] == 302 and after["register_again"] == 302
