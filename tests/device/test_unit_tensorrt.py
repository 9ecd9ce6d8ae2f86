"""The whole unit on the TensorRT path, as a Jetson runs it, with fakes of TensorRT and pycuda that refuse
what the real ones refuse (tests/models/runtime/fake_tensorrt.py): every network as an engine, screening
on a request thread, one network whose engine does not build leaving the others screening, the engines'
GPU memory freed at the end; `build-engines` and a start that builds asking systemd for time."""
from __future__ import annotations

import dataclasses
import functools
import json
import socket
import threading
from pathlib import Path

import pytest

from device import sdnotify
from device.cli import main as cli_main
from device.config import Config
from device.screening.progression import ProgressionPolicy
from device.screening.referral import ReferralPolicy
from device.unit import Unit
from models.runtime import registry
from models.runtime import tensorrt as te
from tests.device.kiosk.test_kiosk import photograph_right_eye
from tests.models.runtime import fake_tensorrt as fake

SEGMENTATION_OUTPUTS = "disc,cup,fovea,glaucoma"


def capture(unit: Unit, identifier: str):
    """A patient, a visit, and a photo of the right eye from the simulated camera: (visit, photo)."""
    return photograph_right_eye(unit, identifier, name="Halima Said", year_of_birth=1956, sex="F")


def screen_on_a_request_thread(unit: Unit, uuid: str, photo) -> dict:
    box: dict = {}

    def request():
        try:
            box["out"] = unit.screen_and_record(uuid, "right", photo)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test's thread
            box["error"] = exc

    t = threading.Thread(target=request, name="waitress-3")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["out"]


@pytest.fixture
def started(tmp_path):
    units = []

    def start() -> Unit:
        unit = Unit.from_config(Config(data_dir=tmp_path / "unit", device_id="test-unit", simulate=True))
        units.append(unit)
        unit.start()
        return unit

    yield start
    for u in units:
        u.close()


def test_the_unit_screens_on_tensorrt_from_a_request_thread_and_frees_the_gpu_at_close(monkeypatch, started):
    _, cuda = fake.install(monkeypatch, "10.3.0")
    driver = cuda.driver_state
    unit = started()
    assert unit.model_error is None and unit.model_errors == {}
    # segmentation and progression; the shipped referral rule does not use the disc classifier, so it is not run
    assert [(e.name, e.backend) for e in unit.engines()] == [("segmentation", "tensorrt"), ("progression", "tensorrt")]
    assert unit.pipeline is not None and unit.pipeline.not_run == {"glaucoma"}
    uuid, photo = capture(unit, "TRT-1")
    out = screen_on_a_request_thread(unit, uuid, photo)
    assert out["referral"] in ("normal", "refer", "rescreen")
    assert {c[2] for c in driver.calls if c[1] == "waitress-3" and c[0] not in ("push", "pop")} == {driver.primary}
    unit.close()
    assert not driver.memory and not driver.primary.alive


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0"])
def test_the_unit_screens_when_the_progression_engine_does_not_build(monkeypatch, started, version):
    """The shipped progression policy decides on the cup-to-disc ratio alone, so the unit keeps that rule and
    screens; the Models page and the status say the network is not loaded, and why."""
    trt, _ = fake.install(monkeypatch, version, refuse={"progression"})
    unit = started()
    assert unit.pipeline is not None and unit.pipeline.engine.backend == "tensorrt"
    assert unit.progression is not None and unit.progression.engine is None
    assert "progression.onnx" in unit.model_errors["progression"] and "ratio alone" in unit.model_errors["progression"]
    assert unit.status()["models"]["ok"] and "progression" in unit.status()["models"]["not_loaded"]
    uuid, photo = capture(unit, "TRT-2")
    out = screen_on_a_request_thread(unit, uuid, photo)
    assert out["referral"] in ("normal", "refer", "rescreen")
    if out["gradable"]:
        assert out["progression"]["verdict"] == "no_history"

    from device.kiosk import create_app
    from tests.device.kiosk.test_kiosk import add_workers, sign_in

    add_workers(unit)
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    sign_in(client)
    page = client.get("/admin/models")
    assert page.status_code == 200
    assert 'id="progression-not-loaded"' in page.text and "progression.onnx" in page.text


def test_a_progression_policy_that_needs_the_network_screens_without_progression(monkeypatch, started):
    fake.install(monkeypatch, "10.3.0", refuse={"progression"})
    monkeypatch.setattr(ProgressionPolicy, "load", classmethod(lambda cls, path: cls(use_models=True, engine_coef=1.0)))
    unit = started()
    assert unit.pipeline is not None and unit.progression is None
    assert "without comparing with earlier visits" in unit.model_errors["progression"]
    uuid, photo = capture(unit, "TRT-3")
    assert screen_on_a_request_thread(unit, uuid, photo)["progression"] is None


def test_a_disc_classifier_that_does_not_build_leaves_the_screening(monkeypatch, started):
    """The shipped referral decides on the vCDR, so the disc classifier is not even loaded: its engine
    failing to build changes nothing. A rule that averages its score cannot screen without it."""
    fake.install(monkeypatch, "10.3.0", refuse={"glaucoma"})
    unit = started()
    assert unit.pipeline is not None and unit.pipeline.classifier is None and unit.pipeline.not_run == {"glaucoma"}
    assert "glaucoma" not in unit.model_errors
    assert unit.progression is not None and unit.progression.engine is not None
    uuid, photo = capture(unit, "TRT-4")
    out = screen_on_a_request_thread(unit, uuid, photo)
    assert out["referral"] in ("normal", "refer", "rescreen") and out["disc_classifier_probability"] is None


def test_a_referral_rule_that_averages_the_disc_classifier_does_not_screen_without_it(monkeypatch, started):
    fake.install(monkeypatch, "10.3.0", refuse={"glaucoma"})
    shipped = ReferralPolicy.load(registry.ARTIFACTS / "screening.json")
    averaging = dataclasses.replace(shipped, opinions=["vcdr", "disc_classifier"])
    monkeypatch.setattr(ReferralPolicy, "load", classmethod(lambda cls, path: averaging))
    unit = started()
    assert unit.pipeline is None and "glaucoma.onnx" in (unit.model_error or "")


def test_without_the_segmentation_engine_nothing_is_screened_and_the_kiosk_says_so(monkeypatch, started):
    fake.install(monkeypatch, "10.3.0", refuse={SEGMENTATION_OUTPUTS})
    unit = started()
    assert unit.pipeline is None and "segmentation" in unit.model_error
    assert unit.status()["models"]["ok"] is False


def test_build_engines_builds_every_engine_it_can_and_names_the_one_it_cannot(monkeypatch, tmp_path, capsys):
    trt, _ = fake.install(monkeypatch, "8.6.2", refuse={"progression"})
    rc = cli_main(["build-engines", "--data-dir", str(tmp_path)])
    out = capsys.readouterr()
    report = json.loads(out.out)
    assert rc == 1
    assert set(report["built"]) == {"segmentation.fp32", "segmentation.int8", "glaucoma.fp32"}
    assert set(report["failed"]) == {"progression.fp32"} and "progression" in out.err
    assert all(Path(f).exists() for f in report["built"].values())
    # a second run finds them cached and builds nothing again
    builds = len(trt.state.builds)
    cli_main(["build-engines", "--data-dir", str(tmp_path)])
    assert len(trt.state.builds) == builds


def test_a_start_that_builds_engines_asks_systemd_for_more_time(monkeypatch, tmp_path):
    """The kiosk is Type=notify with a 90 s start limit; building the engines takes minutes on a Jetson."""
    fake.install(monkeypatch, "10.3.0", slow_build_s=0.3)
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        previous = te.set_long_wait(functools.partial(sdnotify.extending_timeout, every_s=0.1))
        try:
            from models.runtime import registry

            registry.load_engine("glaucoma", "fp32", backend="tensorrt", engine_cache=tmp_path / "engines").close()
        finally:
            te.set_long_wait(previous)
        got = []
        server.settimeout(0.2)
        try:
            while True:
                got.append(server.recv(256).decode())
        except TimeoutError:
            pass
    extend = [m for m in got if m.startswith("EXTEND_TIMEOUT_USEC=")]
    assert len(extend) >= 2, got  # at the start and again while it builds
    assert all(m.startswith("EXTEND_TIMEOUT_USEC=300000\n") and "glaucoma" in m for m in extend)
    assert got[-1] == "STATUS="


def test_the_kiosk_sets_the_timeout_extension_before_it_loads_the_models(monkeypatch, tmp_path):
    """`serve` loads the models (and so builds any missing engine) before READY=1: the extension must be
    in place by then."""
    import device.unit as unit_module
    from device import kiosk

    seen = []

    def loading(config):
        seen.append(te._long_wait)
        raise SystemExit(0)

    monkeypatch.setattr(unit_module.Unit, "from_config", staticmethod(loading))
    previous = te.set_long_wait(None)
    try:
        with pytest.raises(SystemExit):
            kiosk.serve(Config(data_dir=tmp_path, simulate=True))
    finally:
        te.set_long_wait(previous)
    assert seen == [sdnotify.extending_timeout]
