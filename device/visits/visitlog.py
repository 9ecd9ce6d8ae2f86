"""The visit log: patients, visits, the photos of each eye and their screening results, and the outbox
that sync empties. Plain SQLite (WAL, synchronous=FULL, foreign keys on) through sqlite-utils, with
the photos in the content-addressed image store beside it.

What a power cut may leave: an image file no row names yet (swept by `recover`), or an open visit
(marked 'interrupted' by `recover`); never a row naming an image that is not wholly on disk, and
never a finished visit without its outbox items, because an image is fsynced before the row naming
it commits and finalizing writes the visit's status and its outbox items in one transaction.

Threads: one connection per VisitLog, opened with check_same_thread=False, and one re-entrant lock
around every use of it, reads included. A sqlite3 connection has a single transaction state, so
threads sharing it unserialized would read or commit each other's half-done work; a connection per
thread would allow parallel reads, but the unit's load is a few writes a minute and reads of a few
rows, and the single lock also makes "put the image, then commit its row" and the orphan sweep
mutually exclusive at no cost. Other processes (the sync service, the CLI) open their own VisitLog;
SQLite's file locks and a busy timeout serialize them with this one. Only the kiosk's start-up
should call `recover`, since another process's image write in flight is invisible to this lock.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import numbers
import sqlite3
import threading
import unicodedata
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
import sqlite_utils

from device.screening.result import ScreeningResult
from device.screening.wording import N_
from device.visits import migrations
from device.visits.datadir import DataDir
from device.visits.imagestore import DiskFullError, ImageStore
from models.runtime.images import decode_mask, encode_mask

__all__ = ["VisitLog", "DiskFullError", "DatabaseCorruptError", "EYES", "OUTBOX_KIND", "FHIR_KIND", "VERDICTS",
           "encode_masks", "decode_masks"]

EYES = ("right", "left")
MAX_IDENTIFIER = 64  # DICOM's Long String, which carries it to the PACS as Patient ID
OUTBOX_KIND = "eye_screening"   # one eye's photo, disc/cup segmentation and report, sent as DICOM
FHIR_KIND = "eye_fhir"          # the same eye as a FHIR transaction bundle, sent to the EHR where one is set
VERDICTS = ("urgent", "refer", "routine", "retake")  # the reading centre's verdicts (device.outbox.verdicts)
VERDICTS_CALLING_BACK = ("urgent", "refer", "retake")  # those that need the patient to come back
_SEX = {"f": "F", "female": "F", "m": "M", "male": "M", "o": "O", "other": "O"}
# why a visit left unfinished was closed: recorded in English, shown in the reader's language
ABANDONED = N_("Abandoned: not finished within {hours} hours")
# why a patient's visit to the eye clinic was not recorded (the kiosk says it in the worker's language)
NOT_REFERRED = N_("visit {visit} did not refer its patient")
SEEN_OUTSIDE = N_("the day seen ({day}) must lie between the visit and today")
# why a correction of a registration was refused (the kiosk checks first; this is two admins at once)
ANOTHER_REGISTRATION = N_("clinic number {number} belongs to another registration: merge the two instead")
_BUSY_TIMEOUT_S = 10.0


class DatabaseCorruptError(RuntimeError):
    """The visit log's file is damaged (it fails SQLite's integrity check or cannot be read): it cannot be
    trusted until it is restored."""


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """SQLite reports a damaged file as a bare DatabaseError; locks and full disks are subclasses."""
    return type(exc) is sqlite3.DatabaseError


def _damaged(data_dir: Path, detail: str) -> DatabaseCorruptError:
    return DatabaseCorruptError(
        f"the visit log {DataDir(data_dir).visits_db} is damaged ({detail}). Stop the unit and restore the file "
        "from a backup; visits already sent are safe at the reading centre.")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    """One fixed format (UTC, milliseconds, +00:00) so timestamps sort as text and parse on Python 3.10."""
    if t.tzinfo is None:
        raise ValueError(f"a timestamp needs a time zone: {t!r}")
    return t.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def _plain(o):
    """numpy scalars and arrays reach us from the pipeline; store them as the numbers they hold."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not a number, text, list or dict")


def _to_json(value, what: str) -> str:
    try:
        return json.dumps(value, default=_plain, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the {what} cannot be stored as JSON: {exc}") from None


def _midnight(day: dt.date, tz: dt.tzinfo | None) -> str:
    """The start of `day` in the clinic's time zone (the unit's local zone unless `tz` is given), as stored."""
    t = dt.datetime.combine(day, dt.time.min)
    return _iso(t.replace(tzinfo=tz) if tz is not None else t.astimezone())


def _check_eye(eye: str) -> None:
    if eye not in EYES:
        raise ValueError(f"eye must be 'right' or 'left', not {eye!r}")


def _optional_number(result: dict, key: str, low: float | None = None, high: float | None = None) -> float | None:
    value = result.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"result[{key!r}] must be a number or None, not {value!r}")
    value = float(value)
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"result[{key!r}] = {value} is out of range")
    return value


def encode_masks(disc: np.ndarray, cup: np.ndarray) -> bytes:
    """Disc and cup masks (boolean, the photo's size) as the PNG the log stores: REFUGE's coding (0 cup,
    128 disc rim, 255 background), which every annotation tool and dataset reader here already speaks."""
    disc, cup = np.asarray(disc, bool), np.asarray(cup, bool)
    if disc.ndim != 2 or disc.shape != cup.shape:
        raise ValueError(f"the disc and cup masks must be two images of the photo's size, not {disc.shape} and {cup.shape}")
    ok, png = cv2.imencode(".png", encode_mask(disc, cup))
    if not ok:
        raise ValueError("the disc and cup masks could not be encoded as PNG")
    return png.tobytes()


def decode_masks(png: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(disc, cup) from a stored masks PNG; anything that is not a REFUGE-coded mask is refused by name."""
    if not isinstance(png, (bytes, bytearray)) or bytes(png[:8]) != b"\x89PNG\r\n\x1a\n":
        raise ValueError("the disc/cup masks must be the bytes of a PNG file")
    img = cv2.imdecode(np.frombuffer(bytes(png), np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError("the disc/cup masks PNG must be one 8-bit grey channel (REFUGE coding)")
    stray = sorted(set(np.unique(img).tolist()) - {0, 128, 255})
    if stray:
        raise ValueError(f"the disc/cup masks PNG holds values {stray[:5]} besides REFUGE's 0 (cup), 128 (disc rim) "
                         "and 255 (background)")
    return decode_mask(img)


MAX_PHONE, MAX_ADDRESS = 32, 200


def _language(language: str | None) -> str | None:
    """A patient's language as an ISO 639 code ('hi', 'sw'), or None where none was recorded."""
    language = (language or "").strip().lower() or None
    if language is not None and not (2 <= len(language) <= 3 and language.isascii() and language.isalpha()):
        raise ValueError(f"a patient's language is a two- or three-letter code such as 'hi' or 'sw', not {language!r}")
    return language


def _contact(phone: str | None, address: str | None) -> tuple[str | None, str | None]:
    """A phone number (digits, spaces, + - ( ) only) and a village or address, both optional."""
    phone, address = (phone or "").strip() or None, " ".join((address or "").split()) or None
    if phone is not None and (len(phone) > MAX_PHONE or not all(c.isdigit() or c in " +-()" for c in phone)):
        raise ValueError(f"a phone number is at most {MAX_PHONE} digits, spaces and + - ( ), not {phone!r}")
    if address is not None and len(address) > MAX_ADDRESS:
        raise ValueError(f"a village or address is at most {MAX_ADDRESS} characters")
    return phone, address


def fold(text: str | None) -> str:
    """A name as search compares it: accents and case folded away (Unicode's own decomposition and case
    folding), so "Ánh" and "anh", "Nguyễn" and "NGUYEN" are one."""
    decomposed = unicodedata.normalize("NFKD", text or "")
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _dose(row: dict) -> dict:
    """A light_doses row in the shape the capture report gives (`hardware.light_dose.EyeDose.to_dict`)."""
    def mean(mj: float, s: float) -> float:
        return round(mj / s, 6) if s > 0 else 0.0

    return {"preview": {"seconds": row["preview_s"], "radiant_exposure_mj_cm2": row["preview_mj_cm2"],
                        "mean_irradiance_mw_cm2": mean(row["preview_mj_cm2"], row["preview_s"])},
            "flash": {"count": row["flashes"], "seconds": row["flash_s"], "radiant_exposure_mj_cm2": row["flash_mj_cm2"],
                      "mean_irradiance_mw_cm2": mean(row["flash_mj_cm2"], row["flash_s"])},
            "radiant_exposure_mj_cm2": round(row["preview_mj_cm2"] + row["flash_mj_cm2"], 6),
            "peak_irradiance_mw_cm2": row["peak_irradiance_mw_cm2"], "limits": json.loads(row["limits"]),
            "led_response": row["led_response"], "stopped": row["stopped"], "recorded_at": row["recorded_at"]}


class VisitLog:
    def __init__(self, data_dir: Path, *, min_free_bytes: int = 200 * 2**20,
                 clock: Callable[[], dt.datetime] = _utc_now):
        """Open (creating if needed) the visit log and the image store in `data_dir` (see DataDir), migrating the schema.

        `clock` returns the current time as an aware datetime; a unit without a network or a real-time
        clock may want its own, and tests set visits in the past with it.
        """
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = int(min_free_bytes)
        self._clock = clock
        self._lock = threading.RLock()
        self.files = DataDir(self.data_dir)
        self.images = ImageStore(self.files.images)
        conn = sqlite3.connect(self.files.visits_db, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
        conn.create_function("fold", 1, fold, deterministic=True)
        try:
            self.db = sqlite_utils.Database(conn, execute_plugins=False)
            self.db.enable_wal()
            if self.db.journal_mode != "wal":
                raise RuntimeError(f"the file system under {self.data_dir} cannot hold a write-ahead-log SQLite database")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA foreign_keys = ON")
            migrations.migrate(self.db)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
                raise _damaged(self.data_dir, str(exc)) from exc
            raise

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def __enter__(self) -> "VisitLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return migrations.schema_version(self.db)

    # -- plumbing ---------------------------------------------------------------------------------
    def _now(self) -> str:
        return _iso(self._clock())

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One IMMEDIATE transaction under the lock: all of it commits, or none of it."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.rollback()
                raise
            self.db.commit()

    def _rows(self, sql: str, params: tuple | dict = ()) -> list[dict]:
        with self._lock:
            return list(self.db.query(sql, params))

    def _one(self, sql: str, params: tuple | dict = ()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _visit_row(self, visit_uuid: str) -> dict:
        row = self._one("SELECT * FROM visits WHERE uuid = ?", (visit_uuid,))
        if row is None:
            raise LookupError(f"no visit {visit_uuid!r} in the visit log")
        return row

    def _writable_visit(self, visit_uuid: str) -> dict:
        row = self._visit_row(visit_uuid)
        if row["status"] == "finished":
            raise ValueError(f"visit {visit_uuid} is already finished; start a new visit to screen this patient again")
        return row

    def _patient_row(self, identifier: str) -> dict:
        row = self.get_patient(identifier)
        if row is None:
            raise LookupError(f"no patient with identifier {identifier!r}: register the patient first")
        return row

    # -- patients ---------------------------------------------------------------------------------
    def _clean_patient(self, identifier: str, year_of_birth: int | None, sex: str | None) -> tuple[str, str | None]:
        """The identifier and sex as stored, or a ValueError saying what is wrong. The identifier must be
        one DICOM can carry (a Long String), so that no patient the kiosk accepts is unsendable."""
        if not isinstance(identifier, str) or not identifier.strip():
            raise ValueError("a patient needs an identifier (the clinic's patient number)")
        identifier = identifier.strip()
        if len(identifier) > MAX_IDENTIFIER or "\\" in identifier or any(unicodedata.category(c) == "Cc" for c in identifier):
            raise ValueError(f"a patient identifier is at most {MAX_IDENTIFIER} characters, without a backslash "
                             f"or control characters: {identifier!r}")
        this_year = self._clock().year
        if year_of_birth is not None and (isinstance(year_of_birth, bool) or not isinstance(year_of_birth, int)
                                          or not 1900 <= year_of_birth <= this_year):
            raise ValueError(f"year of birth must be a year between 1900 and {this_year}, not {year_of_birth!r}")
        if sex is not None and sex.strip():
            if sex.strip().lower() not in _SEX:
                raise ValueError(f"sex must be female, male or other (F/M/O), not {sex!r}")
            return identifier, _SEX[sex.strip().lower()]
        return identifier, None

    def add_patient(self, identifier: str, *, name: str | None = None, year_of_birth: int | None = None,
                    sex: str | None = None, consent: bool = False, phone: str | None = None,
                    address: str | None = None, language: str | None = None) -> dict:
        """Register a patient. Identifiers are compared without regard to case, as workers type them. `language`:
        the one the patient reads, which their slip is printed in (None: the health worker's)."""
        identifier, sex = self._clean_patient(identifier, year_of_birth, sex)
        phone, address = _contact(phone, address)
        language = _language(language)
        with self._write() as db:
            if self.get_patient(identifier) is not None:
                raise ValueError(f"a patient with identifier {identifier!r} is already registered")
            db.table("patients").insert({"identifier": identifier, "name": (name or "").strip() or None,
                                   "year_of_birth": year_of_birth, "sex": sex, "consent": int(bool(consent)),
                                   "phone": phone, "address": address, "language": language, "created_at": self._now()})
        patient = self.get_patient(identifier)
        assert patient is not None  # inserted just above
        return patient

    def edit_patient(self, identifier: str, *, by: str, new_identifier: str | None = None, name: str | None = None,
                     year_of_birth: int | None = None, sex: str | None = None, phone: str | None = None,
                     address: str | None = None, language: str | None = None) -> dict:
        """Correct a registration (an admin's job), keeping who changed what and when. Eyes that could not be
        sent because of the old details are queued again: the DICOM is built from the patient as they are now.
        `language` None leaves the patient's language as it is. Returns the fields changed ({field: [old, new]})
        and how many eyes were queued again."""
        with self._write() as db:
            patient = self._patient_row(identifier)
            new_identifier, sex = self._clean_patient(new_identifier or patient["identifier"], year_of_birth, sex)
            phone, address = _contact(phone, address)
            wanted = {"identifier": new_identifier, "name": (name or "").strip() or None,
                      "year_of_birth": year_of_birth, "sex": sex, "phone": phone, "address": address}
            if language is not None:
                wanted["language"] = _language(language)
            changes = {k: [patient[k], v] for k, v in wanted.items() if patient[k] != v}
            if "identifier" in changes:
                other = self.get_patient(new_identifier)
                if other is not None and other["id"] != patient["id"]:
                    raise ValueError(ANOTHER_REGISTRATION.format(number=repr(other["identifier"])))
            if not changes:
                return {"changes": {}, "requeued": 0}
            db.table("patients").update(patient["id"], {k: v for k, (_, v) in changes.items()})
            self._audit(db, patient["id"], new_identifier, "edit", changes, by)
            requeued = self._requeue_patient(db, patient["id"])
        return {"changes": changes, "requeued": requeued}

    def merge_patients(self, keep: str, duplicate: str, *, by: str) -> dict:
        """Two registrations of one person become one: the duplicate's visits move to `keep` and the duplicate
        is deleted, its details kept in the edit history. Eyes already sent went to the PACS under the
        duplicate's number, which this unit cannot change there: the count says how many."""
        with self._write() as db:
            kept, gone = self._patient_row(keep), self._patient_row(duplicate)
            if kept["id"] == gone["id"]:
                raise ValueError("a registration cannot be merged into itself")
            moved = db.execute("SELECT count(*) FROM visits WHERE patient_id = ?", (gone["id"],)).fetchone()[0]
            sent = db.execute("""SELECT count(*) FROM outbox o JOIN visits v ON v.uuid = o.visit_uuid
                                 WHERE v.patient_id = ? AND o.status = 'sent'""", (gone["id"],)).fetchone()[0]
            db.execute("UPDATE visits SET patient_id = ? WHERE patient_id = ?", (kept["id"], gone["id"]))
            db.execute("DELETE FROM patients WHERE id = ?", (gone["id"],))
            registration = {k: gone[k] for k in ("identifier", "name", "year_of_birth", "sex", "phone", "address", "created_at")}
            self._audit(db, kept["id"], kept["identifier"], "merge",
                        {"merged": registration, "visits_moved": moved, "sent_under_old_identifier": sent}, by)
            requeued = self._requeue_patient(db, kept["id"])
        return {"visits_moved": moved, "sent_under_old_identifier": sent, "requeued": requeued}

    def patient_edits(self, identifier: str) -> list[dict]:
        """The registration's corrections and merges, newest first."""
        patient = self._patient_row(identifier)
        rows = self._rows("SELECT * FROM patient_edits WHERE patient_id = ? ORDER BY id DESC", (patient["id"],))
        for row in rows:
            row["changes"] = json.loads(row["changes"])
        return rows

    def _audit(self, db: sqlite_utils.Database, patient_id: int, identifier: str, action: str, changes: dict, by: str) -> None:
        if not (by or "").strip():
            raise ValueError("a correction to a patient names who made it")
        db.table("patient_edits").insert({"patient_id": patient_id, "identifier": identifier, "action": action,
                                          "changes": _to_json(changes, "changes"), "edited_by": by,
                                          "edited_at": self._now()})

    def _requeue_patient(self, db: sqlite_utils.Database, patient_id: int) -> int:
        cursor = db.execute("""UPDATE outbox SET status = 'pending', next_attempt_at = NULL
                               WHERE status = 'quarantined'
                                 AND visit_uuid IN (SELECT uuid FROM visits WHERE patient_id = ?)""", (patient_id,))
        return cursor.rowcount

    def get_patient(self, identifier: str) -> dict | None:
        row = self._one("SELECT * FROM patients WHERE identifier = ?", ((identifier or "").strip(),))
        if row is not None:
            row["consent"] = bool(row["consent"])
        return row

    def find_patients(self, query: str, limit: int = 20) -> list[dict]:
        """Patients whose identifier starts with, or whose name contains, `query`, in any case and with or
        without accents ("Nguyen" or "anh" finds "Nguyễn Thị Ánh"): a worker types on whatever keyboard the
        kiosk has, and a name is registered as the patient spells it. Identifier hits first."""
        def escaped(text: str) -> str:
            return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")

        q = (query or "").strip()
        rows = self._rows(
            """SELECT *, identifier LIKE :prefix ESCAPE '\\' AS by_identifier FROM patients
               WHERE identifier LIKE :prefix ESCAPE '\\' OR fold(name) LIKE :part ESCAPE '\\'
               ORDER BY by_identifier DESC, identifier LIMIT :limit""",
            {"prefix": escaped(q) + "%", "part": "%" + escaped(fold(q)) + "%", "limit": int(limit)})
        for row in rows:
            del row["by_identifier"]
            row["consent"] = bool(row["consent"])
        return rows

    # -- visits -----------------------------------------------------------------------------------
    def start_visit(self, patient_identifier: str, *, operator: str | None = None, device_id: str | None = None) -> str:
        """Open a visit and return its UUID (the root of its DICOM UIDs); refuse when the disk is nearly full."""
        free = self.images.free_bytes()
        if free < self.min_free_bytes:
            raise DiskFullError(free, self.min_free_bytes, self.data_dir)
        visit_uuid = str(uuid.uuid4())
        with self._write() as db:
            patient = self._patient_row(patient_identifier)
            db.table("visits").insert({"uuid": visit_uuid, "patient_id": patient["id"], "operator": operator,
                                 "device_id": device_id, "status": "open", "started_at": self._now()})
        return visit_uuid

    def add_capture(self, visit_uuid: str, eye: str, photo_jpeg: bytes, *, quality: dict, source: str = "camera",
                    raw_jpeg: bytes | None = None, calibration: dict | None = None) -> int:
        """Store the photo durably, then commit the capture; a retake is another capture, and the latest counts.
        `raw_jpeg`: the still as the camera gave it, where `photo_jpeg` is that still corrected with the optic
        module's `calibration` (its version, date and module serial); both are kept."""
        _check_eye(eye)
        for what, data in (("photo", photo_jpeg), ("raw still", raw_jpeg)):
            if (data is not None or what == "photo") and (not isinstance(data, (bytes, bytearray))
                                                          or bytes(data[:2]) != b"\xff\xd8"):
                raise ValueError(f"the {what} must be the bytes of a JPEG file")
        if not isinstance(quality, dict):
            raise ValueError("quality must be the quality gate's report as a dict")
        if calibration is not None and not (isinstance(calibration, dict) and "version" in calibration):
            raise ValueError("the calibration must say its version, as OpticalCalibration.summary() does")
        quality_json = _to_json(quality, "quality report")
        calibration_json = _to_json(calibration, "calibration") if calibration is not None else None
        with self._write() as db:
            self._writable_visit(visit_uuid)
            sha = self.images.put(photo_jpeg)
            raw_sha = self.images.put(raw_jpeg) if raw_jpeg is not None else None
            capture_id = db.table("captures").insert({"visit_uuid": visit_uuid, "eye": eye, "photo_sha256": sha,
                                                      "quality": quality_json, "source": source,
                                                      "raw_sha256": raw_sha, "calibration": calibration_json,
                                                      "captured_at": self._now()}).last_pk
            assert capture_id is not None  # an insert into a rowid table always sets last_pk
            db.execute("DELETE FROM skipped_eyes WHERE visit_uuid = ? AND eye = ?", (visit_uuid, eye))
        return capture_id

    def add_result(self, capture_id: int, result: ScreeningResult | dict, *, overlay: bytes | None = None,
                   masks_png: bytes | None = None) -> int:
        """Store a capture's screening result: the whole JSON, the figures the log is queried by as columns,
        the overlay shown to the worker (a JPEG) and the disc/cup masks (`encode_masks`) that sync sends.
        The JSON is made here, at the storage edge; a result already in that form (one read back from
        another log, as the sync trials replay) is checked the same way.
        """
        if isinstance(result, ScreeningResult):
            result = result.to_dict()
        if not isinstance(result, dict):
            raise ValueError("the result must be a ScreeningResult or its dict")
        missing = [k for k in ("gradable", "referral") if k not in result]
        if missing:
            raise ValueError(f"the result lacks {', '.join(missing)}")
        if result["gradable"] not in (True, False):
            raise ValueError(f"result['gradable'] must be true or false, not {result['gradable']!r}")
        if not isinstance(result["referral"], str) or not result["referral"]:
            raise ValueError(f"result['referral'] must be the referral decision, not {result['referral']!r}")
        row = {"capture_id": capture_id, "gradable": int(bool(result["gradable"])),
               "vcdr": _optional_number(result, "vcdr", 0.0, 1.0),
               "glaucoma_probability": _optional_number(result, "glaucoma_probability", 0.0, 1.0),
               "referral": result["referral"], "result_json": _to_json(result, "screening result")}
        if overlay is not None and (not isinstance(overlay, (bytes, bytearray)) or not overlay):
            raise ValueError("the overlay must be the bytes of an image file")
        if masks_png is not None:
            decode_masks(masks_png)  # refuse what sync could not turn into a Segmentation, while the worker is here
        with self._write() as db:
            capture = self._one("SELECT visit_uuid FROM captures WHERE id = ?", (capture_id,))
            if capture is None:
                raise LookupError(f"no capture {capture_id} in the visit log")
            self._writable_visit(capture["visit_uuid"])
            if self._one("SELECT id FROM results WHERE capture_id = ?", (capture_id,)):
                raise ValueError(f"capture {capture_id} already has a result; take another photo to screen again")
            row["overlay_sha256"] = self.images.put(overlay) if overlay is not None else None
            row["masks_sha256"] = self.images.put(masks_png) if masks_png is not None else None
            row["created_at"] = self._now()
            result_id = db.table("results").insert(row).last_pk
            assert result_id is not None  # an insert into a rowid table always sets last_pk
            return result_id

    # -- the light each eye got ---------------------------------------------------------------------
    def record_light_dose(self, visit_uuid: str, eye: str, dose: dict) -> None:
        """Record the light one eye of the visit has had so far (`CaptureLoop.light_dose()`: the figures, the limits
        they were checked against, why the lights were stopped if they were). The ledger only grows, so a record
        that says less than the one kept (a late, stale report) leaves it as it is; a finished visit still takes
        the last light of its eyes, which the unit books when it moves on."""
        _check_eye(eye)
        try:
            preview, flash = dose["preview"], dose["flash"]
            total = float(preview["radiant_exposure_mj_cm2"]) + float(flash["radiant_exposure_mj_cm2"])
            row: dict[str, Any] = {
                "visit_uuid": visit_uuid, "eye": eye, "preview_s": float(preview["seconds"]),
                "preview_mj_cm2": float(preview["radiant_exposure_mj_cm2"]), "flashes": int(flash["count"]),
                "flash_s": float(flash["seconds"]), "flash_mj_cm2": float(flash["radiant_exposure_mj_cm2"]),
                "peak_irradiance_mw_cm2": float(dose["peak_irradiance_mw_cm2"]),
                "limits": _to_json(dose["limits"], "light limits"), "led_response": dose.get("led_response"),
                "stopped": dose.get("stopped")}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a light dose needs its preview, flash, peak irradiance and limits ({exc})") from None
        with self._write() as db:
            self._visit_row(visit_uuid)
            known = self._one("SELECT preview_mj_cm2 + flash_mj_cm2 AS total, stopped FROM light_doses "
                              "WHERE visit_uuid = ? AND eye = ?", (visit_uuid, eye))
            if known is not None and known["total"] > total + 1e-12:
                return
            if known is not None and row["stopped"] is None:
                row["stopped"] = known["stopped"]
            row["recorded_at"] = self._now()
            db.table("light_doses").upsert(row, pk=("visit_uuid", "eye"))

    def light_dose(self, visit_uuid: str, eye: str) -> dict | None:
        """What one eye of the visit got, as `record_light_dose` took it (with its total); None: none recorded."""
        row = self._one("SELECT * FROM light_doses WHERE visit_uuid = ? AND eye = ?", (visit_uuid, eye))
        return None if row is None else _dose(row)

    def light_doses(self, visit_uuid: str) -> dict[str, dict]:
        """Per eye of the visit, the light it got (eyes without a record left out)."""
        return {row["eye"]: _dose(row) for row in self._rows("SELECT * FROM light_doses WHERE visit_uuid = ?",
                                                             (visit_uuid,))}

    def light_dose_totals(self) -> dict:
        """The light this unit has put into eyes, all visits together: what a programme's health page shows
        beside each unit, so one whose doses creep up (an ageing LED, a worker who leaves the preview on) stands out."""
        [row] = self._rows("""SELECT count(*) AS eyes, coalesce(sum(preview_mj_cm2 + flash_mj_cm2), 0) AS total,
                                     max(preview_mj_cm2 + flash_mj_cm2) AS highest, max(peak_irradiance_mw_cm2) AS peak,
                                     count(stopped) AS stopped
                              FROM light_doses""")
        return {"eyes": row["eyes"], "radiant_exposure_mj_cm2": round(row["total"], 6),
                "highest_per_eye_mj_cm2": None if row["highest"] is None else round(row["highest"], 6),
                "peak_irradiance_mw_cm2": row["peak"], "stopped_at_a_limit": row["stopped"]}

    def skip_eye(self, visit_uuid: str, eye: str, reason: str) -> None:
        """Record why an eye was not screened; a later capture of that eye clears it."""
        _check_eye(eye)
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("skipping an eye needs a reason (e.g. 'eye prosthesis', 'patient declined')")
        with self._write() as db:
            self._writable_visit(visit_uuid)
            db.execute("INSERT OR REPLACE INTO skipped_eyes (visit_uuid, eye, reason, skipped_at) VALUES (?, ?, ?, ?)",
                       (visit_uuid, eye, reason.strip(), self._now()))

    def finalize_visit(self, visit_uuid: str) -> list[int]:
        """Finish the visit and queue one outbox item per eye with a result, in one transaction; idempotent."""
        with self._write() as db:
            return self._finalize(db, visit_uuid)

    def _finalize(self, db: sqlite_utils.Database, visit_uuid: str) -> list[int]:
        """finalize_visit's work, inside the caller's transaction."""
        visit = self._visit_row(visit_uuid)
        if visit["status"] != "finished":
            now = self._now()
            for eye, state in self._eyes(visit_uuid).items():
                if state["skipped"] is None and state["result"] is not None:
                    db.execute(
                        """INSERT OR IGNORE INTO outbox (visit_uuid, eye, kind, capture_id, result_id, created_at)
                           VALUES (?, ?, ?, ?, ?, ?)""",
                        (visit_uuid, eye, OUTBOX_KIND, state["capture"]["id"], state["result"]["id"], now))
            db.execute("UPDATE visits SET status = 'finished', finished_at = ? WHERE uuid = ?", (now, visit_uuid))
        return [r["id"] for r in self._rows("SELECT id FROM outbox WHERE visit_uuid = ? ORDER BY id", (visit_uuid,))]

    def close_visit(self, visit_uuid: str, reason: str) -> list[int]:
        """Finish a visit the worker cannot finish (the patient left, a registration made by mistake) or that was
        abandoned: an eye with neither a result nor a skip is skipped with `reason`, and what was photographed is
        queued to send like any other visit. Returns the outbox items, as `finalize_visit` does."""
        reason = (reason or "").strip()
        if not reason:
            raise ValueError("closing a visit needs a reason (e.g. 'patient left before the photos')")
        with self._write() as db:
            if self._visit_row(visit_uuid)["status"] == "finished":
                raise ValueError(f"visit {visit_uuid} is already finished")
            for eye, state in self._eyes(visit_uuid).items():
                if state["skipped"] is None and state["result"] is None:
                    db.execute("INSERT INTO skipped_eyes (visit_uuid, eye, reason, skipped_at) VALUES (?, ?, ?, ?)",
                               (visit_uuid, eye, reason, self._now()))
            db.execute("UPDATE visits SET closed_reason = ? WHERE uuid = ?", (reason, visit_uuid))
            return self._finalize(db, visit_uuid)

    def close_abandoned(self, older_than: dt.timedelta) -> list[str]:
        """Close every visit left unfinished (open, or interrupted by a power cut) for longer than `older_than`,
        so that it stops waiting and what it has reaches the PACS. Returns their UUIDs."""
        cutoff = _iso(self._clock() - older_than)
        hours = older_than.total_seconds() / 3600
        stale = [r["uuid"] for r in self._rows(
            "SELECT uuid FROM visits WHERE status IN ('open', 'interrupted') AND started_at <= ? ORDER BY started_at", (cutoff,))]
        for visit_uuid in stale:
            self.close_visit(visit_uuid, ABANDONED.format(hours=f"{hours:g}"))
        return stale

    def _eyes(self, visit_uuid: str) -> dict[str, dict]:
        """Per eye: its latest capture, that capture's result, the skip reason and how many photos were taken."""
        eyes: dict[str, dict[str, Any]] = {eye: {"capture": None, "result": None, "skipped": None, "captures": 0,
                                                 "verdict": None, "verdicts_before": []} for eye in EYES}
        for c in self._rows(
                """SELECT c.*, (SELECT count(*) FROM captures k WHERE k.visit_uuid = c.visit_uuid AND k.eye = c.eye) AS n
                   FROM captures c
                   WHERE c.visit_uuid = ? AND c.id = (SELECT max(id) FROM captures m
                                                      WHERE m.visit_uuid = c.visit_uuid AND m.eye = c.eye)""",
                (visit_uuid,)):
            eyes[c["eye"]]["captures"] = c.pop("n")
            c["quality"] = json.loads(c["quality"])
            c["calibration"] = json.loads(c["calibration"]) if c.get("calibration") else None
            eyes[c["eye"]]["capture"] = c
            r = self._one("SELECT * FROM results WHERE capture_id = ?", (c["id"],))
            if r is not None:
                r["gradable"] = bool(r["gradable"])
                r["screening"] = json.loads(r.pop("result_json"))
                eyes[c["eye"]]["result"] = r
        for s in self._rows("SELECT eye, reason FROM skipped_eyes WHERE visit_uuid = ?", (visit_uuid,)):
            eyes[s["eye"]]["skipped"] = s["reason"]
        for eye, (verdict, *before) in self.verdicts_by_eye(visit_uuid).items():
            eyes[eye]["verdict"], eyes[eye]["verdicts_before"] = verdict, before
        return eyes

    def get_visit(self, visit_uuid: str) -> dict:
        with self._lock:
            visit = self._visit_row(visit_uuid)
            patient = self._one("SELECT * FROM patients WHERE id = ?", (visit.pop("patient_id"),))
            assert patient is not None  # visits.patient_id is a foreign key
            patient["consent"] = bool(patient["consent"])
            visit["patient"] = patient
            visit["eyes"] = self._eyes(visit_uuid)
            visit["outbox"] = self._rows("SELECT id, eye, kind, status FROM outbox WHERE visit_uuid = ? ORDER BY id",
                                         (visit_uuid,))
            return visit

    def visits_for_patient(self, identifier: str) -> list[dict]:
        """The patient's visits, newest first."""
        with self._lock:
            patient = self._patient_row(identifier)
            rows = self._rows("SELECT uuid FROM visits WHERE patient_id = ? ORDER BY started_at DESC, rowid DESC",
                              (patient["id"],))
            return [self.get_visit(r["uuid"]) for r in rows]

    def visits_on(self, day: dt.date, tz: dt.tzinfo | None = None) -> list[dict]:
        """Visits started on `day` in the clinic's time zone (the unit's local zone unless `tz` is given), in order."""
        with self._lock:
            rows = self._rows("SELECT uuid FROM visits WHERE started_at >= ? AND started_at < ? ORDER BY started_at, rowid",
                              (_midnight(day, tz), _midnight(day + dt.timedelta(days=1), tz)))
            return [self.get_visit(r["uuid"]) for r in rows]

    def finished_visits(self, since: dt.date | None = None, until: dt.date | None = None,
                        tz: dt.tzinfo | None = None) -> list[str]:
        """UUIDs of the finished visits started from `since` to `until` (both days included, in the clinic's
        time zone as for `visits_on`; None leaves that end open), in order: what an export picks from."""
        if since is not None and until is not None and since > until:
            raise ValueError(f"the first day ({since}) is after the last day ({until})")
        sql = "SELECT uuid FROM visits WHERE status = 'finished'"
        params: list[str] = []
        if since is not None:
            sql += " AND started_at >= ?"
            params.append(_midnight(since, tz))
        if until is not None:
            sql += " AND started_at < ?"
            params.append(_midnight(until + dt.timedelta(days=1), tz))
        return [r["uuid"] for r in self._rows(sql + " ORDER BY started_at, rowid", tuple(params))]

    def eye_history(self, identifier: str, eye: str) -> list[dict]:
        """The eye's screened results across finished visits, oldest first: what the vCDR trend and progression read."""
        _check_eye(eye)
        with self._lock:
            patient = self._patient_row(identifier)
            rows = self._rows(
                """SELECT v.uuid AS visit_uuid, v.started_at AS time, r.vcdr, r.glaucoma_probability, r.referral,
                          r.gradable, r.result_json, c.photo_sha256, c.id AS capture_id, r.id AS result_id
                   FROM visits v
                   JOIN captures c ON c.id = (SELECT max(id) FROM captures m WHERE m.visit_uuid = v.uuid AND m.eye = :eye)
                   JOIN results r ON r.capture_id = c.id
                   WHERE v.patient_id = :patient AND v.status = 'finished'
                     AND NOT EXISTS (SELECT 1 FROM skipped_eyes s WHERE s.visit_uuid = v.uuid AND s.eye = :eye)
                   ORDER BY v.started_at, v.rowid""",
                {"eye": eye, "patient": patient["id"]})
        for row in rows:
            row["gradable"] = bool(row["gradable"])
        return rows

    # -- follow-up of referred patients -------------------------------------------------------------
    def referred_visits(self) -> list[dict]:
        """Finished visits where an eye's last photo was referred, or the reading centre referred an eye, newest
        first, with the patient's contact and whether they were seen at the eye clinic (`attended_on`, a day, or
        None)."""
        return self._rows(
            """SELECT v.uuid AS visit_uuid, v.started_at, v.operator, p.identifier, p.name, p.phone, p.address,
                      a.attended_on, a.recorded_by
               FROM visits v JOIN patients p ON p.id = v.patient_id
               LEFT JOIN attended_referrals a ON a.visit_uuid = v.uuid
               WHERE v.status = 'finished' AND (EXISTS (
                   SELECT 1 FROM captures c JOIN results r ON r.capture_id = c.id
                   WHERE c.visit_uuid = v.uuid AND r.referral = 'refer'
                     AND c.id = (SELECT max(id) FROM captures m WHERE m.visit_uuid = v.uuid AND m.eye = c.eye)
                     AND NOT EXISTS (SELECT 1 FROM skipped_eyes s WHERE s.visit_uuid = v.uuid AND s.eye = c.eye))
                 OR EXISTS (SELECT 1 FROM verdicts d WHERE d.visit_uuid = v.uuid AND d.verdict IN ('urgent', 'refer')))
               ORDER BY v.started_at DESC, v.rowid DESC""")

    def mark_attended(self, visit_uuid: str, *, on: dt.date, by: str) -> None:
        """Record that a referred patient was seen at the eye clinic on `on` (the worker hears it from them)."""
        if not (by or "").strip():
            raise ValueError("who recorded the attendance must be named")
        with self._write() as db:
            visit = self._visit_row(visit_uuid)
            if visit_uuid not in {r["visit_uuid"] for r in self.referred_visits()}:
                raise ValueError(NOT_REFERRED.format(visit=visit_uuid))
            # `on` is a day of the clinic's calendar; the visit is stored in UTC, so compare local days
            visit_day = dt.datetime.fromisoformat(visit["started_at"]).astimezone().date()
            if on < visit_day or on > self._clock().astimezone().date():
                raise ValueError(SEEN_OUTSIDE.format(day=on.isoformat()))
            db.execute("""INSERT INTO attended_referrals (visit_uuid, attended_on, recorded_by, recorded_at)
                          VALUES (?, ?, ?, ?) ON CONFLICT (visit_uuid) DO UPDATE SET attended_on = excluded.attended_on,
                          recorded_by = excluded.recorded_by, recorded_at = excluded.recorded_at""",
                       (visit_uuid, on.isoformat(), by, self._now()))

    # -- the reading centre's verdicts ---------------------------------------------------------------
    def eyes_to_ask_for_verdicts(self, *, sent_since: dt.datetime, limit: int = 100) -> list[dict]:
        """At most `limit` eyes whose DICOM reached the PACS since `sent_since`: those never asked about first, then
        those asked about longest ago. What sync asks the PACS about; an eye with a verdict is asked about still,
        because a grader may correct it."""
        return self._rows(
            """SELECT o.visit_uuid, o.eye FROM outbox o
               LEFT JOIN verdict_checks c ON c.visit_uuid = o.visit_uuid AND c.eye = o.eye
               WHERE o.kind = ? AND o.status = 'sent' AND o.sent_at >= ?
               ORDER BY c.checked_at IS NOT NULL, c.checked_at, o.id LIMIT ?""",
            (OUTBOX_KIND, _iso(sent_since), int(limit)))

    def verdict_checked(self, visit_uuid: str, eye: str) -> None:
        """The PACS was asked about this eye's verdict now."""
        with self._write() as db:
            db.execute("""INSERT INTO verdict_checks (visit_uuid, eye, checked_at) VALUES (?, ?, ?)
                          ON CONFLICT (visit_uuid, eye) DO UPDATE SET checked_at = excluded.checked_at""",
                       (visit_uuid, eye, self._now()))

    def has_verdict(self, sop_instance_uid: str) -> bool:
        return self._one("SELECT 1 AS x FROM verdicts WHERE sop_instance_uid = ?", (sop_instance_uid,)) is not None

    def add_verdict(self, visit_uuid: str, eye: str, sop_instance_uid: str, *, verdict: str, note: str, grader: str,
                    graded_at: dt.datetime) -> bool:
        """Keep a verdict the reading centre sent for an eye; False when this one (by its SR's UID) is already kept."""
        _check_eye(eye)
        if verdict not in VERDICTS:
            raise ValueError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}")
        with self._write() as db:
            self._visit_row(visit_uuid)
            return db.execute(
                """INSERT OR IGNORE INTO verdicts (sop_instance_uid, visit_uuid, eye, verdict, note, grader, graded_at,
                   received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (sop_instance_uid, visit_uuid, eye, verdict, note or "", grader, _iso(graded_at), self._now())).rowcount == 1

    def latest_verdicts(self, visit_uuid: str) -> dict[str, dict]:
        """Per eye of the visit, the reading centre's latest verdict (a grader may correct one); eyes without none."""
        return {eye: verdicts[0] for eye, verdicts in self.verdicts_by_eye(visit_uuid).items()}

    def verdicts_by_eye(self, visit_uuid: str) -> dict[str, list[dict]]:
        """Per eye of the visit, every verdict the reading centre gave, the latest first: the one that counts, then
        those it corrected, which the worker may already have told the patient."""
        eyes: dict[str, list[dict]] = {}
        for row in self._rows("SELECT * FROM verdicts WHERE visit_uuid = ? ORDER BY graded_at DESC, received_at DESC",
                              (visit_uuid,)):
            eyes.setdefault(row["eye"], []).append(row)
        return eyes

    def verdicts_calling_back(self) -> list[dict]:
        """Eyes whose latest verdict asks the patient to come back and who have not: for a referral, not yet seen
        at the eye clinic; for a photo to take again, no visit of theirs finished since. Newest verdict first."""
        return self._rows(
            """SELECT d.*, p.identifier, p.name FROM verdicts d
               JOIN visits v ON v.uuid = d.visit_uuid JOIN patients p ON p.id = v.patient_id
               WHERE d.verdict IN ('urgent', 'refer', 'retake')
                 AND d.sop_instance_uid = (SELECT e.sop_instance_uid FROM verdicts e WHERE e.visit_uuid = d.visit_uuid
                                           AND e.eye = d.eye ORDER BY e.graded_at DESC, e.received_at DESC LIMIT 1)
                 AND NOT (d.verdict IN ('urgent', 'refer')
                          AND EXISTS (SELECT 1 FROM attended_referrals a WHERE a.visit_uuid = d.visit_uuid))
                 AND NOT (d.verdict = 'retake'
                          AND EXISTS (SELECT 1 FROM visits w WHERE w.patient_id = v.patient_id AND w.status = 'finished'
                                      AND w.started_at > v.started_at))
               ORDER BY d.graded_at DESC""")

    # -- outbox -----------------------------------------------------------------------------------
    def outbox_pending(self, limit: int = 100, *, now: dt.datetime | None = None, kind: str | None = None) -> list[dict]:
        """Items still to send, in creation order; with `now`, only those whose next attempt is due; with `kind`,
        only those of that kind (OUTBOX_KIND goes to the PACS, FHIR_KIND to the EHR)."""
        sql = "SELECT * FROM outbox WHERE status = 'pending'"
        params: list = []
        if now is not None:
            sql += " AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
            params.append(_iso(now))
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        return self._rows(sql + " ORDER BY id LIMIT ?", (*params, int(limit)))

    def queue_fhir(self) -> int:
        """Queue the FHIR bundle of every eye queued for the PACS that has none yet; returns how many were queued.
        The sync calls it where an EHR is configured, so the EHR gets every eye the unit holds, those finished
        before it was configured too, and a unit without one never holds items for nobody."""
        with self._write() as db:
            return db.execute(
                """INSERT OR IGNORE INTO outbox (visit_uuid, eye, kind, capture_id, result_id, created_at)
                   SELECT visit_uuid, eye, ?, capture_id, result_id, ? FROM outbox WHERE kind = ? ORDER BY id""",
                (FHIR_KIND, self._now(), OUTBOX_KIND)).rowcount

    def _outbox_item(self, item_id: int) -> dict:
        row = self._one("SELECT * FROM outbox WHERE id = ?", (item_id,))
        if row is None:
            raise LookupError(f"no outbox item {item_id}")
        return row

    def outbox_items(self, status: str | None = None) -> list[dict]:
        """Every outbox item (or those with `status`: pending, sent, quarantined) in creation order: what the
        kiosk's sync page lists, with each item's last error."""
        if status is None:
            return self._rows("SELECT * FROM outbox ORDER BY id")
        if status not in ("pending", "sent", "quarantined"):
            raise ValueError(f"an outbox status is pending, sent or quarantined, not {status!r}")
        return self._rows("SELECT * FROM outbox WHERE status = ? ORDER BY id", (status,))

    def outbox_eye(self, item_id: int) -> dict:
        """Everything one outbox item stands for, as it was when its visit was finished: the item, the visit,
        the patient, the capture and its result (the screening JSON under "screening"); what sync encodes."""
        with self._lock:
            item = self._outbox_item(item_id)
            visit = self._visit_row(item["visit_uuid"])
            patient = self._one("SELECT * FROM patients WHERE id = ?", (visit["patient_id"],))
            capture = self._one("SELECT * FROM captures WHERE id = ?", (item["capture_id"],))
            result = self._one("SELECT * FROM results WHERE id = ?", (item["result_id"],))
        # foreign keys: a visit names its patient, an outbox item its capture and result
        assert patient is not None and capture is not None and result is not None
        patient["consent"] = bool(patient["consent"])
        capture["quality"] = json.loads(capture["quality"])
        capture["calibration"] = json.loads(capture["calibration"]) if capture.get("calibration") else None
        result["gradable"] = bool(result["gradable"])
        result["screening"] = json.loads(result.pop("result_json"))
        return {"item": item, "visit": visit, "patient": patient, "capture": capture, "result": result,
                "light_dose": self.light_dose(item["visit_uuid"], item["eye"])}

    def outbox_listed(self, status: str) -> list[dict]:
        """The items with this status as the sending page lists them: the patient's name and clinic number and the
        visit's day (a worker knows a patient, not a visit UUID), oldest first."""
        return self._rows(
            """SELECT o.id, o.eye, o.kind, o.attempts, o.last_error, o.next_attempt_at, o.visit_uuid, v.started_at,
                      p.identifier, p.name
               FROM outbox o JOIN visits v ON v.uuid = o.visit_uuid JOIN patients p ON p.id = v.patient_id
               WHERE o.status = ? ORDER BY o.id""", (status,))

    def outbox_last_attempt(self) -> dict | None:
        """The latest attempt to send anything: when, and what came of it."""
        return self._one("SELECT at, outcome, error, response FROM outbox_attempts ORDER BY id DESC LIMIT 1")

    def outbox_recent_failures(self, limit: int = 5) -> list[dict]:
        """The latest failed attempts (to retry or quarantined), newest first: the "last errors" of a health report."""
        return self._rows("""SELECT a.at, a.outcome, a.error, o.visit_uuid, o.eye FROM outbox_attempts a
                             JOIN outbox o ON o.id = a.outbox_id WHERE a.outcome != 'sent' ORDER BY a.id DESC LIMIT ?""",
                          (int(limit),))

    def outbox_due_now(self) -> int:
        """Make every waiting item due at once (the worker pressed "Send now"); returns how many wait."""
        with self._write() as db:
            return db.execute("UPDATE outbox SET next_attempt_at = NULL WHERE status = 'pending'").rowcount

    def outbox_mark_sent(self, item_id: int, response: str | None = None) -> None:
        with self._write() as db:
            self._outbox_item(item_id)
            now = self._now()
            db.execute("""UPDATE outbox SET status = 'sent', sent_at = coalesce(sent_at, ?), attempts = attempts + 1,
                          next_attempt_at = NULL WHERE id = ?""", (now, item_id))
            db.execute("INSERT INTO outbox_attempts (outbox_id, at, outcome, response) VALUES (?, ?, 'sent', ?)",
                       (item_id, now, response))

    def outbox_mark_failed(self, item_id: int, error: str, *, quarantine: bool = False,
                           next_attempt_at: dt.datetime | None = None) -> None:
        """Count a failed attempt and keep its error; the caller chooses the backoff (`next_attempt_at`) or
        quarantine. Only `outbox_requeue` takes an item out of quarantine, so a manual retry that fails again
        leaves it there."""
        outcome = "quarantined" if quarantine else "failed"
        with self._write() as db:
            if self._outbox_item(item_id)["status"] == "sent":
                raise ValueError(f"outbox item {item_id} was already sent; a failure cannot be recorded for it")
            now = self._now()
            db.execute("""UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,
                          status = CASE WHEN ? THEN 'quarantined' ELSE status END WHERE id = ?""",
                       (error, None if next_attempt_at is None else _iso(next_attempt_at), quarantine, item_id))
            db.execute("INSERT INTO outbox_attempts (outbox_id, at, outcome, error) VALUES (?, ?, ?, ?)",
                       (item_id, now, outcome, error))

    def outbox_requeue(self, item_id: int) -> None:
        """Put a quarantined item back in the queue, once whatever made it fail has been fixed."""
        with self._write() as db:
            if self._outbox_item(item_id)["status"] != "quarantined":
                raise ValueError(f"outbox item {item_id} is not quarantined")
            db.execute("UPDATE outbox SET status = 'pending', next_attempt_at = NULL WHERE id = ?", (item_id,))

    def outbox_attempts(self, item_id: int) -> list[dict]:
        """Every attempt to send an item, oldest first, for the IT person asking why it has not arrived."""
        return self._rows("SELECT * FROM outbox_attempts WHERE outbox_id = ? ORDER BY id", (item_id,))

    def count_finished(self) -> int:
        """How many visits are finished: the admin pages' figure, without fetching every visit's id."""
        row = self._one("SELECT count(*) AS n FROM visits WHERE status = 'finished'")
        assert row is not None  # an aggregate query always returns one row
        return int(row["n"])

    def outbox_counts(self) -> dict:
        counts = {"pending": 0, "sent": 0, "quarantined": 0}
        for row in self._rows("SELECT status, count(*) AS n FROM outbox GROUP BY status"):
            counts[row["status"]] = row["n"]
        return counts

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, *, stale_after: float = 6.0) -> dict:
        """Start-up check after a crash or power cut.

        Verifies the database, marks visits open for more than `stale_after` hours as 'interrupted'
        (0: every open visit), removes image files no row names and temp files of interrupted writes,
        and counts rows whose image is missing (which the write order should make impossible).
        """
        with self._lock:
            try:
                problems = [r[0] for r in self.db.execute("PRAGMA integrity_check").fetchall()]
            except sqlite3.DatabaseError as exc:
                if not _is_damage(exc):
                    raise
                problems = [str(exc)]
            if problems != ["ok"]:
                raise _damaged(self.data_dir, "; ".join(problems[:5])) from None
            cutoff = _iso(self._clock() - dt.timedelta(hours=stale_after))
            with self._write() as db:
                interrupted = db.execute("UPDATE visits SET status = 'interrupted' WHERE status = 'open' AND started_at <= ?",
                                         (cutoff,)).rowcount
            referenced = {r["sha"] for r in self._rows(
                """SELECT photo_sha256 AS sha FROM captures
                   UNION SELECT overlay_sha256 FROM results WHERE overlay_sha256 IS NOT NULL
                   UNION SELECT masks_sha256 FROM results WHERE masks_sha256 IS NOT NULL""")}
            removed = self.images.sweep_orphans(referenced)
            missing = sum(not self.images.has(sha) for sha in referenced)
        return {"integrity": "ok", "interrupted": interrupted, "orphans_removed": len(removed), "missing_images": missing}
