"""Export to a USB stick folder: the DICOM files sync would send, read back with pydicom, a visits.csv that
matches the visit log, date ranges, re-exports, and a stick that is missing, full or pulled mid-export."""
from __future__ import annotations

import csv
import datetime as dt
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames

from device.lab.sync_trials import add_visits, sample_eyes
from device.outbox import fhir
from device.outbox.dicom import study_uids
from device.outbox.study import encode_item
from device.outbox.usb import CSV_FIELDS, HEALTH_NAME, REFERRED_FIELDS, REFERRED_NAME, TEMP_PREFIX, ExportError, export
from device.visits.visitlog import EYES, VisitLog

REPO = Path(__file__).resolve().parents[3]


class Clock:
    def __init__(self, t: dt.datetime):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 3)


@pytest.fixture
def clock():
    return Clock(dt.datetime(2025, 3, 4, 9, 0).astimezone())  # 09:00 in the unit's own time zone


@pytest.fixture
def unit(tmp_path, clock):
    with VisitLog(tmp_path / "unit", clock=clock) as log:
        yield log


@pytest.fixture
def stick(tmp_path):
    folder = tmp_path / "stick"
    folder.mkdir()
    return folder


def _csv(stick: Path) -> list[dict]:
    with open(stick / "visits.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        return list(reader)


def test_two_visits_export_as_dicom_files_a_fhir_bundle_and_a_csv(unit, stick, eyes):
    visits = add_visits(unit, eyes, 2, random.Random(1))
    out = export(unit, stick, since=dt.date(2025, 3, 4), until=dt.date(2025, 3, 4), device_id="GSE-TEST")
    assert (out["visits"], out["eyes"], out["files"], out["skipped"]) == (2, 4, 16, [])
    for visit in visits:
        record = unit.get_visit(visit)
        for item in record["outbox"]:
            folder = stick / visit / item["eye"]
            assert sorted(p.name for p in folder.iterdir()) == ["fhir-bundle.json", "photo.dcm", "report.dcm",
                                                                "segmentation.dcm"]
            bundle = fhir.validate(json.loads((folder / "fhir-bundle.json").read_text(encoding="utf-8")))
            assert bundle.type == "transaction"
            assert (folder / "fhir-bundle.json").read_bytes() == fhir.encode_item(unit, item["id"], "GSE-TEST")
            uids = study_uids(visit, item["eye"])
            photo, seg, report = (dcmread(folder / name) for name in ("photo.dcm", "segmentation.dcm", "report.dcm"))
            assert (photo.Modality, seg.Modality, report.Modality) == ("OP", "SEG", "SR")
            assert {photo.StudyInstanceUID, seg.StudyInstanceUID, report.StudyInstanceUID} == {uids["study"]}
            assert (photo.SOPInstanceUID, seg.SOPInstanceUID, report.SOPInstanceUID) == (uids["photo"], uids["seg"], uids["sr"])
            assert photo.PatientID == record["patient"]["identifier"]
            assert photo.ImageLaterality == {"right": "R", "left": "L"}[item["eye"]]
            jpeg = next(generate_frames(photo.PixelData, number_of_frames=1))
            stored = unit.images.get(record["eyes"][item["eye"]]["capture"]["photo_sha256"])
            assert jpeg.rstrip(b"\0") == stored.rstrip(b"\0")  # the camera's JPEG, as taken
            assert seg.pixel_array.shape == (2, photo.Rows, photo.Columns)
            # The very files sync sends.
            sent = encode_item(unit, item["id"], "GSE-TEST")
            assert [(folder / n).read_bytes() for n in ("photo.dcm", "segmentation.dcm", "report.dcm")] == sent
    rows = _csv(stick)
    assert [(r["visit"], r["eye"]) for r in rows] == [(v, e) for v in sorted(visits) for e in EYES]
    for row in rows:
        record = unit.get_visit(row["visit"])
        result = record["eyes"][row["eye"]]["result"]
        assert row["patient"] == record["patient"]["identifier"] and row["date"] == "2025-03-04"
        assert float(row["vcdr"]) == pytest.approx(result["vcdr"], abs=1e-4)
        assert float(row["glaucoma_probability"]) == pytest.approx(result["glaucoma_probability"], abs=1e-4)
        assert row["referral"] == result["referral"]
    assert not list(stick.rglob(f"{TEMP_PREFIX}*"))


def test_dates_choose_finished_visits_and_a_reexport_keeps_the_sheet_whole(unit, stick, eyes, clock):
    days = {}
    for day in (3, 4, 5):
        clock.t = dt.datetime(2025, 3, day, 23, 30).astimezone()  # late evening: the local date counts
        days[day] = add_visits(unit, eyes, 1, random.Random(day))[0]
    unit.add_patient("OPEN-1")
    still_open = unit.start_visit("OPEN-1")
    assert export(unit, stick, since=dt.date(2025, 3, 4), device_id="GSE-TEST")["visits"] == 2
    assert sorted(p.name for p in stick.iterdir() if p.is_dir()) == sorted([days[4], days[5]])
    assert export(unit, stick, visit_uuid=days[3], device_id="GSE-TEST")["visits"] == 1
    assert export(unit, stick, until=dt.date(2025, 3, 4), device_id="GSE-TEST")["visits"] == 2  # 3 and 4, again
    rows = _csv(stick)
    assert [(r["date"], r["visit"]) for r in rows] == [(f"2025-03-0{d}", days[d]) for d in (3, 3, 4, 4, 5, 5)]
    with pytest.raises(ValueError, match="is open, not finished"):
        export(unit, stick, visit_uuid=still_open, device_id="GSE-TEST")
    with pytest.raises(ValueError, match="not both"):
        export(unit, stick, visit_uuid=days[3], since=dt.date(2025, 3, 1), device_id="GSE-TEST")
    with pytest.raises(ValueError, match="after the last day"):
        export(unit, stick, since=dt.date(2025, 3, 5), until=dt.date(2025, 3, 4), device_id="GSE-TEST")


def test_a_missing_stick_or_a_file_is_named(unit, tmp_path, eyes):
    add_visits(unit, eyes, 1, random.Random(2))
    with pytest.raises(ExportError, match="plugged in and mounted"):
        export(unit, tmp_path / "no-stick", device_id="GSE-TEST")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a folder"):
        export(unit, tmp_path / "a-file", device_id="GSE-TEST")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "visits.csv").write_bytes(b"name,amount\r\nrent,10\r\n")
    with pytest.raises(ExportError, match="not written by a GlaucoScreen export"):
        export(unit, foreign, device_id="GSE-TEST")
    assert [p.name for p in foreign.iterdir()] == ["visits.csv"]  # refused before anything was written
    assert (foreign / "visits.csv").read_bytes() == b"name,amount\r\nrent,10\r\n"


_LIMITED = """
import json, resource, signal, sys
from pathlib import Path
from device.outbox.usb import ExportError, export
from device.visits.visitlog import VisitLog
a = json.loads(sys.argv[1])
with VisitLog(Path(a["data"])) as unit:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (a["limit"], resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        export(unit, Path(a["stick"]), device_id="GSE-TEST")
    except ExportError as exc:
        print(exc)
"""


def test_a_file_the_stick_cannot_hold_stops_the_export_with_no_half_file(unit, stick, eyes):
    """RLIMIT_FSIZE makes the kernel refuse to grow a file past the limit (EFBIG), as a FAT stick does at 4 GiB:
    the photo (~70 KiB) is refused part way through. In a child process, so no other file is limited."""
    add_visits(unit, eyes, 1, random.Random(3))
    args = json.dumps({"data": str(unit.data_dir), "stick": str(stick), "limit": 32 * 1024})
    done = subprocess.run([sys.executable, "-c", _LIMITED, args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "is full" in done.stdout and "export again" in done.stdout
    assert [p for p in stick.rglob("*") if p.is_file()] == []  # neither a half photo nor its temporary file


_EXPORT = """
import json, sys
from pathlib import Path
from device.outbox.usb import export
from device.visits.visitlog import VisitLog
a = json.loads(sys.argv[1])
with VisitLog(Path(a["data"])) as unit:
    print("ready", flush=True)
    export(unit, Path(a["stick"]), device_id="GSE-TEST")
print("done", flush=True)
"""


def test_a_stick_pulled_mid_export_holds_only_whole_files(unit, tmp_path, eyes):
    add_visits(unit, eyes, 3, random.Random(4))
    expected = {}
    for item in unit.outbox_items():
        files = dict(zip(("photo.dcm", "segmentation.dcm", "report.dcm"), encode_item(unit, item["id"], "GSE-TEST")))
        files[fhir.FILE_NAME] = fhir.encode_item(unit, item["id"], "GSE-TEST")
        for name, data in files.items():
            expected[Path(item["visit_uuid"]) / item["eye"] / name] = data
    rng = random.Random(5)
    interrupted = 0
    for attempt in range(3):
        stick = tmp_path / f"stick{attempt}"
        stick.mkdir()
        args = json.dumps({"data": str(unit.data_dir), "stick": str(stick)})
        child = subprocess.Popen([sys.executable, "-c", _EXPORT, args], stdout=subprocess.PIPE, text=True, cwd=REPO)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        child.kill()  # the stick is pulled (the writer stops dead at a random point)
        out, _ = child.communicate(timeout=30)
        interrupted += "done" not in out
        for path in stick.rglob("*"):
            if path.is_file() and not path.name.startswith(TEMP_PREFIX):
                relative = path.relative_to(stick)
                if relative.name == "visits.csv":
                    assert len(_csv(stick)) == 6  # the sheet is written last, whole
                elif relative == Path(REFERRED_NAME):  # whole or absent, like the sheet
                    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(REFERRED_FIELDS)
                elif relative == Path(HEALTH_NAME):
                    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
                else:
                    assert path.read_bytes() == expected[relative], relative
    assert interrupted >= 1  # at least one pull landed mid-export
