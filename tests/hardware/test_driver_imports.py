"""What the unit says when a board's driver module fails to import, as each really fails on a board.

- picamera2 from Raspberry Pi OS's apt packages imports simplejpeg, compiled against Bookworm's numpy
  1.24; a venv that pulled in numpy 2 fails there with Cython's "numpy.dtype size changed" ValueError
  (picamera2 issues 1088, 1170, 1211), or with "numpy.core.multiarray failed to import" from a C module.
- `import lgpio` makes notification FIFOs (.lgd-nfy*) in $LG_WD or else the working directory; under
  systemd (cwd /) it fails with FileNotFoundError on '.lgd-nfy-3' (gpiozero issue 1106, lg issue 22).

Stand-in modules placed where `import` finds them raise exactly those errors.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from hardware import boards
from hardware.camera import CameraError, Picamera2Camera
from hardware.illumination import IlluminationError, make_pin_factory

SIZE_CHANGED = "numpy.dtype size changed, may indicate binary incompatibility. Expected 96 from C header, got 88 from PyObject"


def put_package(root: Path, name: str, body: str) -> None:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """A folder first on sys.path for stand-in modules; whatever they import is forgotten afterwards."""
    for name in ("picamera2", "simplejpeg", "libcamera", "lgpio", "gpiozero.pins.lgpio"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_picamera2_built_for_numpy_1_under_numpy_2_is_a_camera_error_that_says_so(modules):
    # as in Bookworm's /usr/lib/python3/dist-packages: picamera2 -> encoders -> simplejpeg -> _jpeg.pyx
    put_package(modules, "simplejpeg", f"raise ValueError({SIZE_CHANGED!r})\n")
    put_package(modules, "picamera2", "import simplejpeg\nclass Picamera2: pass\n")
    with pytest.raises(CameraError) as caught:
        Picamera2Camera().start()
    message = str(caught.value)
    assert SIZE_CHANGED in message                          # the cause, as numpy said it
    assert f"numpy {np.__version__}" in message and "numpy<2" in message   # what is loaded, and the fix
    assert isinstance(caught.value.__cause__, ValueError)


def test_a_c_module_built_for_numpy_1_is_a_camera_error_too(modules):
    put_package(modules, "picamera2", "raise ImportError('numpy.core.multiarray failed to import')\n")
    with pytest.raises(CameraError, match=r"numpy 1\.x.*numpy<2.*multiarray failed to import"):
        Picamera2Camera().start()


def test_picamera2_missing_and_picamera2_broken_are_told_apart(modules, monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)     # not installed at all
    with pytest.raises(CameraError, match="picamera2 is not installed"):
        Picamera2Camera().start()
    monkeypatch.delitem(sys.modules, "picamera2")
    # installed, but a venv made without --system-site-packages cannot see apt's libcamera
    put_package(modules, "picamera2", "import libcamera\n")
    monkeypatch.setitem(sys.modules, "libcamera", None)
    with pytest.raises(CameraError) as caught:
        Picamera2Camera().start()
    assert "not installed" not in str(caught.value) and "libcamera" in str(caught.value)


def test_lgpio_that_cannot_make_its_fifo_says_where_and_what_to_set(modules, tmp_path, monkeypatch):
    # lgpio.py at import: the C library's FIFO could not be made, so the Python side's open() fails
    put_package(modules, "lgpio",
                "raise FileNotFoundError(2, 'No such file or directory', '.lgd-nfy-3')\n")
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IlluminationError) as caught:
        make_pin_factory(boards.PI5)
    message = str(caught.value)
    assert ".lgd-nfy" in message and str(tmp_path) in message   # the FIFO, and where it was tried
    assert "LG_WD" in message and "WorkingDirectory" in message
    assert "not installed" not in message


def test_lgpio_names_lg_wd_when_that_is_where_it_failed(modules, monkeypatch):
    put_package(modules, "lgpio", "raise FileNotFoundError(2, 'No such file or directory', '.lgd-nfy-3')\n")
    monkeypatch.setenv("LG_WD", "/run/nowhere")
    with pytest.raises(IlluminationError, match="in /run/nowhere"):
        make_pin_factory(boards.PI5)


def test_lgpio_missing_is_said_to_be_missing(modules, monkeypatch):
    monkeypatch.setitem(sys.modules, "lgpio", None)
    with pytest.raises(IlluminationError, match=r"'lgpio' is not installed.*python3-lgpio"):
        make_pin_factory(boards.PI5)
