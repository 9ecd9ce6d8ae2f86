"""The TensorRT path. Where TensorRT and pycuda are missing (here), it runs against `fake_tensorrt`: fakes of
both APIs that refuse what the real ones refuse (a profile for an input the network does not have, a free
input without a profile, min > opt > max, CUDA calls on a thread with no current context). On a machine
with TensorRT the last test builds and runs every shipped engine for real."""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from models.runtime import registry
from models.runtime import tensorrt as te
from models.runtime.engine import EngineError, OnnxEngine
from tests.models.runtime import fake_tensorrt as fake

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("pycuda") is not None
REPO = Path(__file__).resolve().parents[3]
VERSIONS = ["8.6.2", "10.3.0"]  # JetPack 6.0 and 6.1/6.2


def shipped_builds() -> list[tuple[str, str]]:
    """(model, precision) of every ONNX file the unit ships: every engine a Jetson builds."""
    out = []
    for name, entry in registry.manifest().items():
        if isinstance(entry, dict) and "file" in entry:
            out += [(name, "fp32")] + ([(name, "int8")] if "int8" in entry else [])
    return out


def test_cache_key_changes_with_model_version_gpu_and_precision():
    base = ("a" * 64, "10.3.0", "Orin", "int8")
    keys = {te.cache_key(*base)}
    for i, other in enumerate(("b" * 64, "8.6.2", "Orin Nano", "fp32")):
        changed = list(base)
        changed[i] = other
        keys.add(te.cache_key(*changed))
    assert len(keys) == 5
    assert te.cache_key(*base) == te.cache_key(*base)
    p = te.engine_path(Path("/cache"), "segmentation", *base)
    assert p.name.startswith("segmentation-int8-") and p.suffix == ".engine"
    assert "/" not in te.timing_cache_path(Path("/c"), "10.3.0", "NVIDIA Orin / 8GB").name


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT present: the real build test below runs instead")
def test_missing_tensorrt_is_a_clear_engine_error(tmp_path):
    with pytest.raises(EngineError, match="TensorRT is not installed"):
        te.TensorRTEngine(tmp_path / "m.onnx", name="segmentation", precision="int8", model_sha256="0" * 64, cache_dir=tmp_path)


# -- profiles from each network's own inputs ----------------------------------------------------------
def test_every_shipped_network_gets_a_profile_for_exactly_its_own_inputs():
    """The profiles read from the ONNX files: `image` for the segmentation and disc networks, `earlier`,
    `current` and `years` for progression; batch 1 to 4, the other dimensions as the file fixes them."""
    expected = {
        "segmentation": {"image": (3, 256, 256)},
        "glaucoma": {"image": (3, 256, 256)},
        "progression": {"earlier": (3, 160, 160), "current": (3, 160, 160), "years": (1,)},
    }
    seen = set()
    for name, precision in shipped_builds():
        path, _ = registry.model_file(name, precision)
        shapes = te.profile_shapes(te.onnx_inputs(path))
        assert {k: v[0][1:] for k, v in shapes.items()} == expected[name], (name, precision)
        for least, best, most in shapes.values():
            assert least[0] == 1 and best[0] == 1 and most[0] == te.MAX_BATCH
        seen.add(name)
    assert seen == set(expected), "a shipped network this test does not know: add its inputs above"


def test_a_free_dimension_other_than_the_batch_is_refused_not_guessed():
    spec = te.InputSpec("image", (None, 3, None, 256))
    with pytest.raises(EngineError, match="free dimension other than the batch"):
        te.profile_shapes([spec])
    assert te.profile_shapes([te.InputSpec("k", (1, 4))]) == {}  # fixed: needs no profile


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name, precision", shipped_builds())
def test_every_shipped_engine_builds_against_a_builder_that_refuses_what_tensorrt_refuses(
        monkeypatch, tmp_path, version, name, precision):
    trt, _ = fake.install(monkeypatch, version)
    path, _ = registry.model_file(name, precision)
    out = te.build(path, tmp_path / "e.engine", tmp_path / "timing.cache", precision)
    plan = out.read_bytes()
    header = json.loads(plan[16:16 + int.from_bytes(plan[8:16], "little")])
    inputs = {n for n, _, _ in header["inputs"]}
    assert len(header["profiles"]) == 1 and set(header["profiles"][0]) == inputs
    assert (tmp_path / "timing.cache").exists()
    assert trt.state.errors == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_fake_builder_refuses_what_tensorrt_refuses(monkeypatch, version):
    """Each refusal the real builder makes; the old hard-wired profile (`image`, 1x3x256x256) among them."""
    trt, _ = fake.install(monkeypatch, version)
    path, _ = registry.model_file("progression")
    major = int(version.split(".")[0])

    def attempt(shapes: dict, flags: int | None = None):
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        network = builder.create_network(te.network_flags(trt, major) if flags is None else flags)
        parser = trt.OnnxParser(network, trt.Logger())
        if not parser.parse(path.read_bytes()):
            return "parse: " + str(parser.get_error(0))
        config = builder.create_builder_config()
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        if shapes:
            profile = builder.create_optimization_profile()
            for n, s in shapes.items():
                profile.set_shape(n, *s)
            config.add_optimization_profile(profile)
        return builder.build_serialized_network(network, config)

    img = (1, 3, 256, 256)
    crop = [(1, 3, 160, 160), (1, 3, 160, 160), (4, 3, 160, 160)]
    years = [(1, 1), (1, 1), (4, 1)]
    assert attempt({"image": (img, img, (4, 3, 256, 256))}) is None  # the old hard-wired profile
    assert "not an input of the network" in trt.state.errors[-1]
    assert attempt({}) is None and "no optimization profile" in trt.state.errors[-1]
    assert attempt({"earlier": crop, "current": crop}) is None
    assert "years: dynamic input is missing dimensions in profile 0" in trt.state.errors[-1]
    assert attempt({"earlier": crop, "current": crop, "years": [(1, 2), (1, 2), (4, 2)]}) is None
    assert "does not match network definition" in trt.state.errors[-1]
    with pytest.raises(RuntimeError, match="opt"):
        attempt({"earlier": [(2, 3, 160, 160), (1, 3, 160, 160), (4, 3, 160, 160)]})
    with pytest.raises(RuntimeError, match="max"):
        attempt({"earlier": [(1, 3, 160, 160), (4, 3, 160, 160), (2, 3, 160, 160)]})
    assert attempt({"earlier": crop, "current": crop, "years": years}) is not None
    if major < 10:
        assert attempt({"earlier": crop, "current": crop, "years": years}, flags=0).startswith("parse: ")


def test_a_network_whose_inputs_differ_from_its_onnx_is_refused(monkeypatch, tmp_path):
    trt, _ = fake.install(monkeypatch, "10.3.0")
    real_parse = trt.OnnxParser.parse

    def renaming(self, model, path=None):
        ok = real_parse(self, model, path)
        self.network.inputs[0].name = "renamed"
        return ok

    monkeypatch.setattr(trt.OnnxParser, "parse", renaming)
    with pytest.raises(EngineError, match="TensorRT sees inputs"):
        te.build(registry.model_file("glaucoma")[0], tmp_path / "e.engine", tmp_path / "t.cache", "fp32")


# -- the engine: its own CUDA context, from any thread ------------------------------------------------
def make_engine(name: str, cache: Path, precision: str = "fp32") -> te.TensorRTEngine:
    engine = registry.load_engine(name, precision, backend="tensorrt", engine_cache=cache)
    assert isinstance(engine, te.TensorRTEngine)
    return engine


def on_thread(fn, name: str = "waitress-0"):
    """Run `fn` on a new thread (as waitress runs a request) and return what it returned or raise what it raised."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test's thread
            box["error"] = exc

    t = threading.Thread(target=target, name=name)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", ["segmentation", "glaucoma", "progression"])
def test_inference_on_a_request_thread_pushes_the_engines_context_and_pops_it(monkeypatch, tmp_path, version, name):
    """Built on the main thread, run on others: every CUDA call of the run sees the engine's context current on
    that thread, and the thread is left as it was found (no context), so the answers are the CPU's."""
    _, cuda = fake.install(monkeypatch, version)
    driver = cuda.driver_state
    engine = make_engine(name, tmp_path)
    reference = OnnxEngine(registry.model_file(name)[0])
    primary = driver.primary
    assert primary is not None and driver.current() is None, "the engine leaves no context current on its own thread"
    for thread, batch in (("waitress-0", 1), ("waitress-1", 2), ("waitress-0", 1)):
        feeds = reference.example_feeds(batch=batch, seed=batch)
        start = len(driver.calls)
        out, left = on_thread(lambda f=feeds: (engine.run(f), driver.current()), thread)
        assert left is None, "the request thread was left with the engine's context current"
        calls = driver.calls[start:]
        gpu = [c for c in calls if c[0] not in ("push", "pop")]
        assert gpu and {c[1] for c in gpu} == {thread} and {c[2] for c in gpu} == {primary}, gpu
        assert calls[0][0] == "push" and calls[-1][0] == "pop"
        for k, want in reference.run(feeds).items():
            assert out[k].shape == want.shape and np.abs(out[k] - want).max() < 1e-5
    assert driver.current() is None


def test_the_fake_driver_refuses_cuda_on_a_thread_without_a_context(monkeypatch, tmp_path):
    """What pycuda.autoinit did: a context current on the importing thread only. The same run without the
    push fails on a request thread, so the test above would have caught it."""
    _, cuda = fake.install(monkeypatch, "10.3.0")
    engine = make_engine("glaucoma", tmp_path)
    feeds = OnnxEngine(registry.model_file("glaucoma")[0]).example_feeds(batch=3)
    with pytest.raises(cuda.LogicError, match="invalid device context"):
        on_thread(lambda: engine._run(feeds))


def test_a_batch_outside_the_profile_says_so(monkeypatch, tmp_path):
    fake.install(monkeypatch, "8.6.2")
    engine = make_engine("segmentation", tmp_path)
    with pytest.raises(EngineError, match=r"outside \(1, 3, 256, 256\) to \(4, 3, 256, 256\)"):
        engine.run({"image": np.zeros((5, 3, 256, 256), np.float32)})
    with pytest.raises(EngineError, match="needs inputs"):
        engine.run({})


def test_close_frees_the_gpu_memory_and_releases_the_context(monkeypatch, tmp_path):
    _, cuda = fake.install(monkeypatch, "10.3.0")
    driver = cuda.driver_state
    engines = [make_engine(n, tmp_path) for n in ("segmentation", "progression")]
    for e in engines:
        on_thread(lambda e=e: e.run(OnnxEngine(registry.model_file(e.name)[0]).example_feeds(batch=1)))
    assert driver.memory and driver.primary.refcount == 2
    engines[0].close()
    engines[0].close()  # twice is harmless
    assert driver.primary.alive and driver.primary.refcount == 1
    assert all(ctx is driver.primary for ctx, _ in driver.memory.values())
    with pytest.raises(EngineError, match="closed"):
        engines[0].run({"image": np.zeros((1, 3, 256, 256), np.float32)})
    on_thread(engines[1].close)  # from another thread, as the kiosk's shutdown may
    assert not driver.memory and not driver.primary.alive
    assert [c[0] for c in driver.calls].count("detach") == 2


def test_a_failed_load_releases_the_context(monkeypatch, tmp_path):
    trt, cuda = fake.install(monkeypatch, "10.3.0", refuse={"progression"})
    with pytest.raises(EngineError, match="failed to build an engine for progression.onnx"):
        make_engine("progression", tmp_path)
    assert "Could not find any implementation" in trt.state.errors[-1]
    assert not cuda.driver_state.primary.alive and cuda.driver_state.current() is None
    assert not list(tmp_path.glob("progression-*.engine"))


# -- the cache: one builder at a time ----------------------------------------------------------------
CHILD = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.models.runtime import fake_tensorrt as fake
    fake.install_globally("10.3.0", slow_build_s=1.5)
    from models.runtime import registry, tensorrt as te

    here = Path(sys.argv[1])
    (here / f"ready-{{sys.argv[2]}}").touch()
    while not (here / "go").exists():
        time.sleep(0.01)
    path, entry = registry.model_file("glaucoma")
    engine_file = te.engine_path(here / "engines", "glaucoma", entry["sha256"], "10.3.0", "Orin (nvgpu)", "fp32")
    started = time.monotonic()
    status = te.ensure_engine(path, engine_file, here / "engines" / "timing.cache", "fp32", name="glaucoma")
    print(json.dumps({{"status": status, "seconds": time.monotonic() - started, "file": str(engine_file)}}))
""")


def test_two_processes_building_the_same_engine_build_it_once(tmp_path):
    """The installer's build-engines and a starting kiosk: the second waits for the first's lock and then
    uses its file; neither writes over the other."""
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(repo=str(REPO)))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    kids = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(i)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    end = time.monotonic() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < end and all(k.poll() is None for k in kids), [k.communicate() for k in kids]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for k in kids:
        out, err = k.communicate(timeout=120)
        assert k.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["status"] for r in results) == ["built", "built by another process"]
    waited = next(r for r in results if r["status"] != "built")
    assert waited["seconds"] >= 1.0, "the second did not wait for the first's build"
    engine_file = Path(results[0]["file"])
    assert engine_file.read_bytes().startswith(b"FAKETRT1")
    assert not [p for p in (tmp_path / "engines").iterdir() if p.name.endswith(".tmp")]


def test_two_threads_loading_one_engine_build_it_once(monkeypatch, tmp_path):
    trt, _ = fake.install(monkeypatch, "8.6.2", slow_build_s=0.5)
    barrier = threading.Barrier(2)
    engines = []

    def load():
        barrier.wait()
        engines.append(make_engine("progression", tmp_path))

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(engines) == 2 and trt.state.builds == [["progression"]]
    assert engines[0].engine_file == engines[1].engine_file


def test_a_build_or_a_wait_is_announced_and_a_cached_engine_is_not(monkeypatch, tmp_path):
    """The kiosk hangs systemd's EXTEND_TIMEOUT_USEC on this: only a start that builds asks for more time."""
    fake.install(monkeypatch, "10.3.0")
    said = []

    @contextmanager
    def noting(what):
        said.append(what)
        yield

    previous = te.set_long_wait(noting)
    try:
        make_engine("glaucoma", tmp_path).close()
        make_engine("glaucoma", tmp_path).close()
    finally:
        te.set_long_wait(previous)
    assert len(said) == 1 and "glaucoma" in said[0] and "TensorRT" in said[0]


# -- on a machine with TensorRT and a GPU ---------------------------------------------------------------
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT and pycuda come with JetPack on a Jetson; not installable on this machine")
@pytest.mark.parametrize("name, precision", shipped_builds())
def test_builds_caches_and_runs_every_shipped_engine(tmp_path, name, precision):
    path, entry = registry.model_file(name, precision)
    reference = OnnxEngine(path)
    eng = te.TensorRTEngine(path, name=name, precision=precision, model_sha256=entry["sha256"], cache_dir=tmp_path)
    try:
        assert eng.engine_file.exists()
        for batch in (1, 2, 1):  # the screening alternates batch 1 and batch 2 (crop and mirror)
            feeds = reference.example_feeds(batch=batch, seed=batch)
            out = on_thread(lambda f=feeds: eng.run(f))  # a request thread, as in the kiosk
            tolerance = 1e-2 if precision == "fp32" else 0.1
            for k, want in reference.run(feeds).items():
                assert out[k].shape == want.shape and np.abs(out[k] - want).max() < tolerance, (k, batch)
        held = len(eng._buffers)
        eng.run(reference.example_feeds(batch=2, seed=2))
        assert len(eng._buffers) == held  # both shapes' buffers kept, none allocated again
    finally:
        eng.close()
