"""New models on a running unit: a bundle uploaded on the kiosk's Models page is checked and installed, a
refused one changes nothing and the page says why, and the running unit screens with whatever version is
active (installed here, or switched by another process such as the command or the sync service) from its
next screening on, each visit recording exactly those models' versions."""
from __future__ import annotations

import html
import re
import shutil

import pytest

from device.kiosk import create_app
from device.screening import model_update
from device.unit import Unit
from models.runtime import registry
from tests.device.kiosk.test_kiosk import add_workers, csrf_of, photograph_right_eye, sign_in
from tests.device.kiosk.test_kiosk_admin import admin_client
from tests.device.screening.model_bundles import release  # noqa: F401 - a fixture

SHIPPED_VERSIONS = registry.versions()


@pytest.fixture
def unit(release, tmp_path):
    u = Unit.from_config(release.config(tmp_path / "unit", simulate=True))
    u.start()
    add_workers(u)
    yield u
    u.close()


def notices(page: str) -> list[str]:
    return [" ".join(html.unescape(m).split()) for m in re.findall(r'<p class="notice[^"]*"[^>]*>(.*?)</p>', page, re.S)]


def screen_one(unit: Unit, identifier: str) -> dict:
    """One eye photographed on the simulated camera, screened and recorded: the result as the visit log keeps it."""
    uuid, photo = photograph_right_eye(unit, identifier)
    unit.screen_and_record(uuid, "right", photo)
    return unit.visits.get_visit(uuid)["eyes"]["right"]["result"]["screening"]


def test_a_bundle_uploaded_on_the_models_page_is_installed_and_screens_the_next_visit(unit, release, tmp_path):
    client = admin_client(unit)
    page = client.get("/admin/models").text
    assert 'id="version-0.1.0" class="build-in-use"' in page and "rollback-models" not in page

    stranger = release.bundle("kiosk-stranger.tar", "0.2.0", key=release.stranger_key)
    r = client.post("/admin/models/install", data={"csrf_token": csrf_of(page), "bundle": (stranger.open("rb"), "from-usb.tar")},
                    content_type="multipart/form-data", follow_redirects=True)
    assert r.status_code == 200
    assert any("from-usb.tar was not installed" in n and "a key this unit does not trust" in n for n in notices(r.text)), notices(r.text)
    assert unit.pipeline.model_versions["models_release"] == "0.1.0"

    bundle = release.bundle("kiosk-0.2.0.tar", "0.2.0")
    assert bundle.stat().st_size > 64 * 1024, "the upload must be larger than any other form the kiosk takes"
    r = client.post("/admin/models/install", data={"csrf_token": csrf_of(page), "bundle": (bundle.open("rb"), "release.tar")},
                    content_type="multipart/form-data", follow_redirects=True)
    assert "Models version 0.2.0 are installed and in use (before: 0.1.0)." in notices(r.text)
    assert 'id="version-0.2.0" class="build-in-use"' in r.text and "rollback-models" in r.text
    newer = registry.versions(release.newer)
    assert newer["segmentation"] != SHIPPED_VERSIONS["segmentation"]
    assert {k: unit.pipeline.model_versions[k] for k in newer} == newer
    assert unit.status()["models"]["models_release"] == "0.2.0"

    recorded = screen_one(unit, "MU-1")["model_versions"]
    assert {k: recorded[k] for k in newer} == newer and recorded["models_release"] == "0.2.0"
    assert recorded["referral"] == "referral of the shipped models, released again for the tests"

    # another process rolls back (the command, the sync service): the next screening uses the shipped models
    assert model_update.rollback(unit.config)["version"] == "0.1.0"
    recorded = screen_one(unit, "MU-2")["model_versions"]
    assert {k: recorded[k] for k in SHIPPED_VERSIONS} == SHIPPED_VERSIONS and recorded["models_release"] == "0.1.0"

    page = client.get("/admin/models").text
    assert 'id="version-0.1.0" class="build-in-use"' in page and "rollback-models" not in page
    left = re.search(r'<li id="version-0.2.0">(.*?)</li>', page, re.S)
    assert left is not None and "taken out of use by a rollback" in left.group(1)  # still installed, and said why
    r = client.post("/admin/models/rollback", data={"csrf_token": csrf_of(page)}, follow_redirects=True)
    assert any("there is nothing older to roll back to" in n for n in notices(r.text)), notices(r.text)


def test_a_bundle_on_a_usb_stick_is_offered_and_installed_with_one_touch(unit, release, tmp_path):
    media = tmp_path / "media"
    stick = media / "PROGRAMME"
    stick.mkdir(parents=True)
    client = admin_client(unit, EXPORT_ROOTS=[str(media)], EXPORT_MOUNTED_ONLY=False)
    page = client.get("/admin/models").text
    assert "No model bundle (a .tar file) at the top of a USB stick." in page

    shutil.copy(release.bundle("usb-stranger.tar", "0.2.0", key=release.stranger_key), stick / "from-elsewhere.tar")
    shutil.copy(release.bundle("usb-0.2.0.tar", "0.2.0"), stick / "glaucoscreen-models-0.2.0.tar")
    (stick / "read-me.txt").write_text("the programme's note")
    page = client.get("/admin/models").text
    offered = re.search(r'<div id="bundles-on-usb">(.*?)</div>', page, re.S).group(1)
    assert re.findall(r'name="name" value="([^"]+)"', offered) == ["from-elsewhere.tar", "glaucoscreen-models-0.2.0.tar"]
    token = csrf_of(page)

    def install(drive, name: str):
        return client.post("/admin/models/install-from-usb", data={"csrf_token": token, "drive": str(drive), "name": name},
                           follow_redirects=True)

    r = install(stick, "from-elsewhere.tar")
    assert any("from-elsewhere.tar was not installed" in n and "a key this unit does not trust" in n
               for n in notices(r.text)), notices(r.text)
    r = install(tmp_path, "media/PROGRAMME/glaucoscreen-models-0.2.0.tar")  # a path the page never offered
    assert any("is not on a USB stick any more" in n for n in notices(r.text)), notices(r.text)
    assert unit.pipeline.model_versions["models_release"] == "0.1.0"
    assert client.post("/admin/models/install-from-usb", data={"drive": str(stick), "name": "glaucoscreen-models-0.2.0.tar"}
                       ).status_code == 400  # no form token

    r = install(stick, "glaucoscreen-models-0.2.0.tar")
    assert "Models version 0.2.0 are installed and in use (before: 0.1.0)." in notices(r.text)
    assert unit.pipeline.model_versions["models_release"] == "0.2.0"
    assert (stick / "glaucoscreen-models-0.2.0.tar").is_file(), "the stick keeps its bundle"

    worker = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(worker, "joseph", "1357").status_code == 302
    assert worker.post("/admin/models/install-from-usb", data={"csrf_token": csrf_of(worker.get("/").text), "drive": str(stick),
                                                               "name": "glaucoscreen-models-0.2.0.tar"}).status_code == 403


def test_only_an_administrator_may_upload_and_only_with_the_form_token(unit, release):
    worker = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(worker, "joseph", "1357").status_code == 302
    token = csrf_of(worker.get("/").text)
    r = worker.post("/admin/models/install", data={"csrf_token": token, "bundle": (release.checks.joinpath("checks.json").open("rb"), "b.tar")},
                    content_type="multipart/form-data")
    assert r.status_code == 403
    admin = admin_client(unit)
    r = admin.post("/admin/models/install", data={"bundle": (release.checks.joinpath("checks.json").open("rb"), "b.tar")},
                   content_type="multipart/form-data")
    assert r.status_code == 400
    assert unit.pipeline.model_versions["models_release"] == "0.1.0"
