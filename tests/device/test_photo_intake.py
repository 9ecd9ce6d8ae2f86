"""A photo at the door: `glaucoscreen screen` (and the kiosk) take in every kind of file a camera or a phone
writes, store exactly what was screened, and refuse what is not a photo file or is far too large, saying why.

The photos are made in the test from a real fundus photo of the shared data (never copied into the repository):
an EXIF-turned non-square JPEG, a CMYK JPEG, 16-bit, greyscale, RGBA and palette PNGs and so on. Each is
recorded with `screen --record`, built into DICOM by the real builder, and the batch is sent to a real Orthanc.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset, dcmread

from device import cli
from device.outbox.dicomweb import DicomWebClient
from device.outbox.study import encode_item
from device.outbox.sync import sync_once
from device.screening.quality import MESSAGES
from device.visits.recording import photo_bytes
from device.visits.visitlog import VisitLog
from models.runtime.images import MAX_PIXELS, ImageError, decode_rgb, read_rgb
from tests.conftest import REPO

pytest_plugins = ["tests.orthanc"]

GREY_WORDS = MESSAGES["grey_photo"]
NO_RETINA_WORDS = MESSAGES["no_fundus"]


# --- Making the files ----------------------------------------------------------------------------

def upright_photo(shared_data: Path) -> np.ndarray:
    """A real fundus photo, upright and not square (512 x 400), as RGB."""
    rgb = read_rgb(shared_data / "refuge-val" / "images" / "V0001.jpg")
    return np.ascontiguousarray(cv2.resize(rgb, (512, 512), interpolation=cv2.INTER_AREA)[56:456])


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an EXIF block saying how to turn it (tag 0x0112), as a phone writes it."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += b"\0\0\0\0"
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\0\0" + tiff
    return jpeg[:2] + app1 + jpeg[2:]


def cv2_bytes(ext: str, image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok, ext
    return buf.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo_files(rgb: np.ndarray) -> dict[str, bytes]:
    """Every kind of photo file `screen` takes in, each showing `rgb` (upright) once decoded."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    pil = Image.fromarray(rgb)
    # EXIF orientation n: the stored pixels are turned so that applying n shows `rgb` upright
    sideways_6 = cv2.rotate(bgr, cv2.ROTATE_90_COUNTERCLOCKWISE)   # 6: turn a quarter clockwise to view
    sideways_8 = cv2.rotate(bgr, cv2.ROTATE_90_CLOCKWISE)          # 8: a quarter anticlockwise
    upside_down = cv2.rotate(bgr, cv2.ROTATE_180)                  # 3: half a turn
    return {
        "plain.jpg": cv2_bytes(".jpg", bgr),
        "exif-6-sideways.jpg": with_orientation(cv2_bytes(".jpg", sideways_6), 6),
        "exif-8-sideways.jpg": with_orientation(cv2_bytes(".jpg", sideways_8), 8),
        "exif-3-upside-down.jpg": with_orientation(cv2_bytes(".jpg", upside_down), 3),
        "cmyk.jpg": pil_bytes(pil.convert("CMYK"), "JPEG", quality=92),
        "progressive.jpg": pil_bytes(pil, "JPEG", quality=92, progressive=True),
        "grey.jpg": cv2_bytes(".jpg", grey),
        "rgb-16bit.png": cv2_bytes(".png", bgr.astype(np.uint16) * 257),
        "grey.png": cv2_bytes(".png", grey),
        "grey-16bit.png": cv2_bytes(".png", grey.astype(np.uint16) * 257),
        "rgba.png": cv2_bytes(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "grey-alpha.png": pil_bytes(pil.convert("LA"), "PNG"),
        "palette.png": pil_bytes(pil.quantize(256), "PNG"),
        "rgb-16bit.tiff": cv2_bytes(".tiff", bgr.astype(np.uint16) * 257),
        "rgb.bmp": cv2_bytes(".bmp", bgr),
        "rgb.webp": cv2_bytes(".webp", bgr),
    }


KINDS = ("plain.jpg", "exif-6-sideways.jpg", "exif-8-sideways.jpg", "exif-3-upside-down.jpg", "cmyk.jpg",
         "progressive.jpg", "grey.jpg", "rgb-16bit.png", "grey.png", "grey-16bit.png", "rgba.png", "grey-alpha.png",
         "palette.png", "rgb-16bit.tiff", "rgb.bmp", "rgb.webp")
GREY_FILES = {"grey.jpg", "grey.png", "grey-16bit.png", "grey-alpha.png"}


def one_colour_png(width: int, height: int, level: int = 128) -> bytes:
    """A real greyscale PNG of one grey level, of any size, made in well under a second.

    Its pixel stream is deflated in blocks of whole rows, each ended with a full flush: a full flush
    resets the compressor, so every block of the same rows compresses to the same bytes, and a 30000 x
    30000 photo (900 MB of pixels) is one compressed block repeated. The zlib trailer's Adler-32 is that
    of all the rows."""
    row = b"\x00" + bytes([level]) * width  # filter byte 0 (none), then the row
    per_block = max(1, min(height, (4 << 20) // len(row)))
    block = row * per_block
    deflate = zlib.compressobj(9)
    first = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)  # with the zlib header
    again = deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH)
    assert deflate.compress(block) + deflate.flush(zlib.Z_FULL_FLUSH) == again
    blocks, rest = divmod(height, per_block)
    checksum = zlib.adler32(block)
    for _ in range(blocks - 1):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(row * rest, checksum)
    last = deflate.compress(row * rest) + deflate.flush(zlib.Z_FINISH)
    stream = first + again * (blocks - 1) + last[:-4] + struct.pack(">I", checksum)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


# --- Every photo screen takes in is stored as screened and can be sent ------------------------------

@pytest.fixture(scope="module")
def recorded(shared_data, tmp_path_factory):
    """Each kind of photo file recorded with `glaucoscreen screen --record`, one patient each."""
    folder = tmp_path_factory.mktemp("photos")
    data_dir = tmp_path_factory.mktemp("unit")
    rows, screened = {}, {}
    files = photo_files(upright_photo(shared_data))
    assert sorted(files) == sorted(KINDS)
    for n, (name, data) in enumerate(sorted(files.items())):
        path = folder / name
        path.write_bytes(data)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["screen", str(path), "--record", "--patient", f"IN-{n:02d}", "--eye", "right",
                             "--data-dir", str(data_dir)])
        assert code in (0, 1), name
        rows[name] = json.loads(out.getvalue().splitlines()[0])
        screened[name] = read_rgb(path)  # what the screening saw: the file's pixels, upright, 8-bit RGB
    return {"folder": folder, "data_dir": data_dir, "rows": rows, "screened": screened}


def _photo_pixels(dicom_bytes: bytes) -> tuple[np.ndarray, Dataset]:
    ds = dcmread(io.BytesIO(dicom_bytes))
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.asarray(pixels, dtype=np.float32), ds


@pytest.mark.parametrize("name", KINDS)
def test_every_photo_screen_takes_in_is_stored_as_screened_and_builds_into_dicom(recorded, name):
    """The reading centre gets the photo the unit screened: upright, the same size, the same pixels (within
    JPEG's loss), whatever the file was; a camera's own upright 8-bit JPEG is kept byte for byte."""
    row = recorded["rows"][name]
    assert row["ok"], row
    rgb = recorded["screened"][name]
    assert (row["height"], row["width"]) == rgb.shape[:2] == (400, 512), "screened upright"
    with VisitLog(recorded["data_dir"]) as visits:
        eye = visits.get_visit(row["visit"])["eyes"]["right"]
        stored = visits.images.get(eye["capture"]["photo_sha256"])
        item = next(i for i in visits.outbox_items() if i["visit_uuid"] == row["visit"])
        files = encode_item(visits, item["id"], "GSE-TEST")
    assert isinstance(files, list), f"{name}: the real DICOM builder refused the stored photo: {files}"
    assert np.abs(decode_rgb(stored).astype(np.float32) - rgb).mean() < 3, "stored is what was screened"
    if name in ("plain.jpg", "progressive.jpg", "grey.jpg"):
        assert stored == (recorded["folder"] / name).read_bytes(), "an upright 8-bit JPEG is kept as it is"
    pixels, photo = _photo_pixels(files[0])
    assert photo.Modality == "OP" and (photo.Rows, photo.Columns) == rgb.shape[:2]
    # as a PACS reads the DICOM photo (no EXIF turn applied by anyone): the screened photo's pixels
    assert np.abs(pixels - rgb).mean() < 4, f"{name}: the DICOM photo is not the photo that was screened"
    assert len(files) == (3 if eye["result"]["masks_sha256"] else 2)  # photo, Segmentation where segmented, report


def test_a_camera_jpeg_that_does_not_show_the_screened_pixels_is_stored_re_encoded(shared_data):
    """The one path the kiosk and the command store through: the camera's JPEG is kept only where it shows
    exactly the photo that was screened."""
    rgb = upright_photo(shared_data)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    plain = cv2_bytes(".jpg", bgr)
    assert photo_bytes(decode_rgb(plain), plain) == plain
    for original in (pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
                     with_orientation(cv2_bytes(".jpg", cv2.rotate(bgr, cv2.ROTATE_180)), 3),
                     cv2_bytes(".jpg", cv2.resize(bgr, (256, 200)))):
        stored = photo_bytes(rgb, original)
        assert stored != original
        with Image.open(io.BytesIO(stored)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (512, 400)
        assert np.abs(decode_rgb(stored).astype(np.float32) - rgb).mean() < 3


@pytest.mark.orthanc
def test_every_photo_screen_takes_in_reaches_the_pacs(recorded, orthanc):
    """The whole batch synced to a real Orthanc: nothing quarantined, one OP photo of the screened size each."""
    client = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    try:
        with VisitLog(recorded["data_dir"]) as visits:
            report = sync_once(visits, client, device_id="GSE-TEST")
            assert (report.failed, report.quarantined) == (0, 0), [
                a for i in visits.outbox_items() for a in visits.outbox_attempts(i["id"]) if a["outcome"] != "sent"]
            assert visits.outbox_counts() == {"pending": 0, "sent": len(recorded["rows"]), "quarantined": 0}
            segmented = sum(1 for r in recorded["rows"].values()
                            if visits.get_visit(r["visit"])["eyes"]["right"]["result"]["masks_sha256"])
    finally:
        client.close()
    assert orthanc.instances_count() == 2 * len(recorded["rows"]) + segmented  # photo and report, Segmentation


# --- Greyscale photos are told so ---------------------------------------------------------------------

def test_a_greyscale_photo_through_screen_is_told_it_is_black_and_white(recorded):
    """A black-and-white (or red-free) photo is a retina in the wrong camera mode, not "no retina in view"."""
    for name in sorted(GREY_FILES):
        row = recorded["rows"][name]
        assert row["ok"] and not row["gradable"] and row["referral"] == "rescreen", (name, row)
        assert [r["code"] for r in row["quality"]["reasons"]] == ["grey_photo"], name
        assert row["referral_reasons"] == [GREY_WORDS], name
        assert NO_RETINA_WORDS not in json.dumps(row), name
    for name in set(recorded["rows"]) - GREY_FILES:
        assert recorded["rows"][name]["gradable"], name  # colour photos of the same eye pass


def test_the_kiosk_tells_a_greyscale_camera_photo_what_is_wrong(shared_data, tmp_path):
    """A camera left in its monochrome (red-free) mode: the capture page's instruction and the result page
    give the grey photo's own words."""
    from device.capture.loop import CapturedPhoto, CaptureLoop
    from device.config import Config
    from device.kiosk import create_app
    from device.screening.quality import QualityGate
    from hardware.camera import ReplayCamera
    from tests.device.kiosk.test_kiosk import add_workers, make_unit, sign_in
    from tests.waiting import wait_until

    grey = cv2.cvtColor(cv2.cvtColor(upright_photo(shared_data), cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    (tmp_path / "camera").mkdir()
    cv2.imwrite(str(tmp_path / "camera" / "grey.png"), grey)
    camera = ReplayCamera(tmp_path / "camera", fps=30)
    loop = CaptureLoop(camera, QualityGate(), Config().capture)
    loop.start()
    try:
        loop.begin("right")
        assert wait_until(lambda: loop.state()["instruction"] == GREY_WORDS, 20), loop.state()
    finally:
        loop.stop()

    unit = make_unit(tmp_path / "unit")
    try:
        add_workers(unit)
        unit.visits.add_patient("GR-1", name="Ruth Njeri", consent=True)
        uuid = unit.visits.start_visit("GR-1", operator="amina", device_id="test-unit")
        unit.screen_and_record(uuid, "right", CapturedPhoto("right", grey, QualityGate().assess(grey)))
        client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
        sign_in(client)
        page = client.get(f"/visits/{uuid}").text
    finally:
        unit.close()
    assert GREY_WORDS.split(" - ")[0] in page and "set the camera to colour" in page
    assert NO_RETINA_WORDS.split(" - ")[0] not in page


# --- Too large: refused from the header ---------------------------------------------------------------

def test_a_photo_over_the_pixel_bound_is_refused_before_it_is_decoded(tmp_path, shared_data):
    """64 megapixels of one grey (a small file) is refused from its header, in words; the bound is a setting."""
    big = tmp_path / "big.png"
    big.write_bytes(one_colour_png(8000, 8000))
    assert big.stat().st_size < 1_000_000
    t0 = time.perf_counter()
    with pytest.raises(ImageError, match=r"too large to screen \(8000x8000 pixels, 64 megapixels; at most 50 megapixels"):
        read_rgb(big)
    assert time.perf_counter() - t0 < 1.0, "a refused photo must not be decoded first"
    # the same builder makes a PNG that decodes to what it says
    small = one_colour_png(3000, 2000, level=77)
    assert (decode_rgb(small) == 77).all() and decode_rgb(small).shape == (2000, 3000, 3)
    # a configured bound: lower refuses a photo the default takes
    photo = shared_data / "refuge-val" / "images" / "V0001.jpg"
    assert read_rgb(photo, max_pixels=300_000).shape == (512, 512, 3)
    with pytest.raises(ImageError, match="512x512 pixels"):
        read_rgb(photo, max_pixels=200_000)


def test_screen_takes_its_bound_from_the_config(shared_data, tmp_path, capsys):
    """`max_photo_pixels` in the unit's config: a 3.6 MP Drishti photo refused under a 2 MP bound, in words."""
    from device.config import Config

    assert Config().max_photo_pixels == MAX_PIXELS
    photo = sorted((shared_data / "drishti-gs1" / "images").glob("*.jpg"))[0]
    config = tmp_path / "glaucoscreen.toml"
    config.write_text("max_photo_pixels = 2000000\n")
    assert cli.main(["--config", str(config), "screen", str(photo), "--data-dir", str(tmp_path / "unit")]) == 1
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["ok"] is False and "too large to screen" in row["error"] and "at most 2 megapixels" in row["error"], row
    config.write_text("max_photo_pixels = 10\n")
    with pytest.raises(ValueError, match="max_photo_pixels must lie between"):
        Config.load(config)


def _run_limited(args: list[str], *, memory_bytes: int, timeout_s: float) -> tuple[int, str, str, float]:
    """`glaucoscreen ARGS` in a child under an address-space limit: (exit code, stdout, stderr, seconds).
    A child that outlives `timeout_s` is killed and fails the test."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-m", "device.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, preexec_fn=limit)
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        pytest.fail(f"glaucoscreen {' '.join(args)} did not finish in {timeout_s:.0f} s")
    return child.returncode, out.decode(), err.decode(), time.monotonic() - t0


def test_screen_refuses_a_30000_pixel_png_in_words_under_a_4_gib_limit(tmp_path):
    """The campaign's photo: a 30000 x 30000 PNG of about a megabyte. Decoded it would take 2.7 GB for its
    pixels alone; under a 4 GiB limit it must be refused in words, at once, with no traceback."""
    big = tmp_path / "huge.png"
    big.write_bytes(one_colour_png(30000, 30000))
    assert struct.unpack(">II", big.read_bytes()[16:24]) == (30000, 30000) and big.stat().st_size < 3_000_000
    code, out, err, seconds = _run_limited(["screen", str(big)], memory_bytes=4 << 30, timeout_s=120)
    assert "Traceback" not in err, err[-2000:]
    assert code == 1, err[-2000:]
    row = json.loads(out.splitlines()[0])
    assert row["ok"] is False and "too large to screen" in row["error"] and "900 megapixels" in row["error"], row
    assert seconds < 60, seconds


# --- Not a file: said so, never read -------------------------------------------------------------------

def test_screen_names_what_a_path_is_when_it_is_not_a_photo_file_and_never_hangs(tmp_path, shared_data):
    """A named pipe would block `screen` forever waiting for a writer; /dev/zero reads as endless zeros.
    Only regular files (or links to them) are read; anything else is named."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jpg"
    zero.symlink_to("/dev/zero")
    link = tmp_path / "link.jpg"
    link.symlink_to(shared_data / "refuge-val" / "images" / "V0001.jpg")
    paths = [fifo, zero, tmp_path, Path("/dev/null"), link]
    try:
        done = subprocess.run([sys.executable, "-m", "device.cli", "screen", *map(str, paths)], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("`glaucoscreen screen` hung on a named pipe")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, paths)), done.stderr[-2000:]
    errors = [r.get("error") or "" for r in rows]
    assert "named pipe (FIFO)" in errors[0]
    assert "/dev/zero" in errors[1] and "character device" in errors[1] and "empty" not in errors[1]
    assert "folder" in errors[2]
    assert "character device" in errors[3]
    assert rows[4]["ok"] and rows[4]["gradable"], rows[4]
    assert all(not r["ok"] for r in rows[:4])
