"""A unit carries no training code: no torch, no dataset readers, no synthetic generator, no lab. So the
appliance's run-time path (the unit, the kiosk, the command's top level, sync, USB export) must start,
screen a photo and shut down with those made unimportable; an import of one of them anywhere on the
path, even an unused one, would break a unit in the field that the workstation's tests never see.

It runs in a fresh interpreter: this one has long imported whatever other tests needed."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import REPO

BLOCKED = ("torch", "models.train", "models.datasets", "models.synthetic", "models.net", "device.lab")

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys, tempfile
    from pathlib import Path

    BLOCKED = {blocked!r}
    refused = []

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                refused.append(name)
                raise ImportError(f"the run-time path imported {{name}}", name=name)
            return None

    sys.meta_path.insert(0, Block())

    import device.cli, device.kiosk, device.outbox.sync, device.outbox.usb, device.unit  # noqa: F401 - importing is the test
    from device.config import Config
    from device.unit import Unit
    from models.runtime.images import read_rgb

    with tempfile.TemporaryDirectory() as tmp:
        unit = Unit.from_config(Config(data_dir=Path(tmp) / "unit", device_id="test-unit", simulate=True))
        try:
            unit.start()
            assert unit.pipeline is not None, unit.model_error
            result = unit.pipeline.screen(read_rgb({photo!r}))
        finally:
            unit.close()
    print(json.dumps({{"referral": result.referral, "gradable": result.gradable, "refused": refused,
                       "loaded": sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))}}))
""")


def test_the_run_time_path_imports_no_training_code(refuge_photo):
    script = SCRIPT.format(blocked=BLOCKED, photo=str(refuge_photo))
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gradable"] and report["referral"], report
    assert report["loaded"] == [] and report["refused"] == [], report
