"""The visit log's schema, as numbered migrations that run when the database is opened.

Each migration is a function that takes the database to the next version; PRAGMA user_version says
which ones have run. A unit in a clinic may skip several software updates, so every migration ever
shipped stays here, in order, and is never edited once shipped: a change is a new function.
The DDL is written out in SQL rather than through sqlite-utils' table helpers so that what a version
means is frozen in the file (CHECK constraints, composite keys) and cannot drift with a library.

All pending migrations run in one IMMEDIATE transaction together with the new user_version: a power
cut mid-upgrade leaves the previous version intact, and two processes opening the log at once
(kiosk and sync service) cannot both run the same migration.
"""
from __future__ import annotations

from typing import Callable, Sequence

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def m001_visit_log(db: sqlite_utils.Database) -> None:
    """Patients, visits, captures (retakes add rows), results, skipped eyes, the outbox and its attempt log."""
    for sql in (
        """CREATE TABLE patients (
            id INTEGER PRIMARY KEY,
            identifier TEXT NOT NULL UNIQUE COLLATE NOCASE CHECK (length(trim(identifier)) > 0),
            name TEXT,
            year_of_birth INTEGER,
            sex TEXT CHECK (sex IN ('F', 'M', 'O')),
            consent INTEGER NOT NULL DEFAULT 0 CHECK (consent IN (0, 1)),
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE visits (
            uuid TEXT PRIMARY KEY,
            patient_id INTEGER NOT NULL REFERENCES patients(id),
            operator TEXT,
            device_id TEXT,
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'finished', 'interrupted')),
            started_at TEXT NOT NULL,
            finished_at TEXT
        )""",
        "CREATE INDEX visits_by_patient ON visits(patient_id, started_at)",
        "CREATE INDEX visits_by_start ON visits(started_at)",
        """CREATE TABLE captures (
            id INTEGER PRIMARY KEY,
            visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
            eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
            photo_sha256 TEXT NOT NULL,
            quality TEXT NOT NULL,
            source TEXT NOT NULL,
            captured_at TEXT NOT NULL
        )""",
        "CREATE INDEX captures_by_eye ON captures(visit_uuid, eye, id)",
        """CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            capture_id INTEGER NOT NULL UNIQUE REFERENCES captures(id),
            gradable INTEGER NOT NULL CHECK (gradable IN (0, 1)),
            vcdr REAL,
            glaucoma_probability REAL,
            referral TEXT NOT NULL,
            overlay_sha256 TEXT,
            result_json TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        """CREATE TABLE skipped_eyes (
            visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
            eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
            reason TEXT NOT NULL CHECK (length(trim(reason)) > 0),
            skipped_at TEXT NOT NULL,
            PRIMARY KEY (visit_uuid, eye)
        )""",
        # AUTOINCREMENT: an outbox id is never reused, so "creation order" stays true forever.
        """CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
            eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
            kind TEXT NOT NULL,
            capture_id INTEGER NOT NULL REFERENCES captures(id),
            result_id INTEGER NOT NULL REFERENCES results(id),
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            next_attempt_at TEXT,
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'quarantined')),
            sent_at TEXT,
            UNIQUE (visit_uuid, eye, kind)
        )""",
        "CREATE INDEX outbox_by_status ON outbox(status, id)",
        """CREATE TABLE outbox_attempts (
            id INTEGER PRIMARY KEY,
            outbox_id INTEGER NOT NULL REFERENCES outbox(id),
            at TEXT NOT NULL,
            outcome TEXT NOT NULL CHECK (outcome IN ('sent', 'failed', 'quarantined')),
            error TEXT,
            response TEXT
        )""",
        "CREATE INDEX outbox_attempts_by_item ON outbox_attempts(outbox_id, id)",
    ):
        db.execute(sql)


def m002_result_masks(db: sqlite_utils.Database) -> None:
    """Each result names its disc and cup masks (a PNG in REFUGE coding, on the photo's own pixel grid, in
    the image store), so the Segmentation that sync sends is the one the worker saw; results from before
    this version have none, and their eyes are sent without a Segmentation."""
    db.execute("ALTER TABLE results ADD COLUMN masks_sha256 TEXT")


def m003_patient_edits(db: sqlite_utils.Database) -> None:
    """Corrections and merges of registrations, each with who made it, when and what changed. Not a
    foreign key to patients: a registration merged into another is deleted, and its history stays."""
    db.execute("""CREATE TABLE patient_edits (
        id INTEGER PRIMARY KEY,
        patient_id INTEGER NOT NULL,
        identifier TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('edit', 'merge')),
        changes TEXT NOT NULL,
        edited_by TEXT NOT NULL CHECK (length(trim(edited_by)) > 0),
        edited_at TEXT NOT NULL
    )""")
    db.execute("CREATE INDEX patient_edits_by_patient ON patient_edits(patient_id, id)")


def m004_follow_up(db: sqlite_utils.Database) -> None:
    """A way to reach a referred patient (phone, village or address; both optional) and, per referred visit,
    whether the patient was seen at the eye clinic: what the Referred list follows up."""
    db.execute("ALTER TABLE patients ADD COLUMN phone TEXT")
    db.execute("ALTER TABLE patients ADD COLUMN address TEXT")
    db.execute("""CREATE TABLE attended_referrals (
        visit_uuid TEXT PRIMARY KEY REFERENCES visits(uuid),
        attended_on TEXT NOT NULL,
        recorded_by TEXT NOT NULL CHECK (length(trim(recorded_by)) > 0),
        recorded_at TEXT NOT NULL
    )""")


def m005_closed_visits(db: sqlite_utils.Database) -> None:
    """Why a visit was closed without the worker finishing it: cancelled with a reason, or abandoned
    (left unfinished past the configured age). Such a visit is finished with what it has, and synced."""
    db.execute("ALTER TABLE visits ADD COLUMN closed_reason TEXT")


def m006_verdicts(db: sqlite_utils.Database) -> None:
    """The reading centre's verdicts on the unit's eyes, as sync fetches them from the PACS: each once, keyed by
    the SR that carried it; an eye may get more than one (a grader corrects a verdict), and the latest counts."""
    db.execute("""CREATE TABLE verdicts (
        sop_instance_uid TEXT PRIMARY KEY,
        visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
        eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
        verdict TEXT NOT NULL CHECK (verdict IN ('urgent', 'refer', 'routine', 'retake')),
        note TEXT NOT NULL DEFAULT '',
        grader TEXT NOT NULL,
        graded_at TEXT NOT NULL,
        received_at TEXT NOT NULL
    )""")
    db.execute("CREATE INDEX verdicts_by_eye ON verdicts(visit_uuid, eye, graded_at)")
    # when sync last asked the PACS about an eye still waiting: each run asks those it asked longest ago
    db.execute("""CREATE TABLE verdict_checks (
        visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
        eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
        checked_at TEXT NOT NULL,
        PRIMARY KEY (visit_uuid, eye)
    )""")


def m007_patient_language(db: sqlite_utils.Database) -> None:
    """The language a patient reads ('hi', 'sw'), in which the kiosk prints their slip; NULL where none was
    recorded (registrations from before this version), which prints in the health worker's language."""
    db.execute("ALTER TABLE patients ADD COLUMN language TEXT")


def m008_optics_and_light(db: sqlite_utils.Database) -> None:
    """Each capture names the still as the camera gave it (`raw_sha256`, in the image store; the photo itself is
    the one corrected with the optic module's calibration) and that calibration (`calibration`, JSON: version,
    date, module serial; NULL where the photo was not corrected). And the light each eye of each visit got: the
    preview's and the flashes', as time and radiant exposure, the highest irradiance, the limits it was held to
    and, where the lights were stopped at a limit, why. Captures and visits from before this version have none."""
    db.execute("ALTER TABLE captures ADD COLUMN raw_sha256 TEXT")
    db.execute("ALTER TABLE captures ADD COLUMN calibration TEXT")
    db.execute("""CREATE TABLE light_doses (
        visit_uuid TEXT NOT NULL REFERENCES visits(uuid),
        eye TEXT NOT NULL CHECK (eye IN ('right', 'left')),
        preview_s REAL NOT NULL CHECK (preview_s >= 0),
        preview_mj_cm2 REAL NOT NULL CHECK (preview_mj_cm2 >= 0),
        flashes INTEGER NOT NULL CHECK (flashes >= 0),
        flash_s REAL NOT NULL CHECK (flash_s >= 0),
        flash_mj_cm2 REAL NOT NULL CHECK (flash_mj_cm2 >= 0),
        peak_irradiance_mw_cm2 REAL NOT NULL CHECK (peak_irradiance_mw_cm2 >= 0),
        limits TEXT NOT NULL,
        led_response TEXT,
        stopped TEXT,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (visit_uuid, eye)
    )""")


MIGRATIONS: tuple[Migration, ...] = (m001_visit_log, m002_result_masks, m003_patient_edits, m004_follow_up,
                                     m005_closed_visits, m006_verdicts, m007_patient_language, m008_optics_and_light)


def schema_version(db: sqlite_utils.Database) -> int:
    return db.execute("PRAGMA user_version").fetchone()[0]


def migrate(db: sqlite_utils.Database, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Bring the database up to date; return the version it is at. A no-op when already current."""
    target = len(migrations)
    if schema_version(db) == target:
        return target
    db.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(db)  # again, under the write lock: another process may have migrated
        if current > target:
            raise RuntimeError(
                f"the visit log {db.conn.execute('PRAGMA database_list').fetchone()[2] or '(memory)'} has schema "
                f"version {current}, newer than this software knows ({target}): update the software, "
                "do not open it with an older one")
        for migration in migrations[current:]:
            migration(db)
        db.execute(f"PRAGMA user_version = {target:d}")
    except BaseException:
        db.rollback()
        raise
    db.commit()
    return target
