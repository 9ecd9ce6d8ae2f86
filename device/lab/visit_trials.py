"""Power-cut trials of the visit log: a writer killed at a random moment loses nothing it said was stored.

    glaucoscreen trials visits --trials 200 [--seed S] [--json-out FILE] [--data-dir DIR]

A unit is switched off at the wall in the middle of a visit. Each trial starts a writer process (a
fresh interpreter, as the kiosk is) that records a seeded plan of visits through the visit log's own
API, the calls the kiosk makes (`device.visits.recording.record_eye` is add_capture then add_result
with the overlay and the disc/cup masks): register the patient, start the visit, per eye one or two
photos (a retake), the result with its overlay and masks or a skipped eye, and finish the visit
(sometimes the worker walks away and leaves it open). After each call returns the writer says so on
stdout. The runner kills it with SIGKILL at a seeded point: while it opens the log (a new unit's
first start, migrations included), just after a seeded call of the plan, or once it is idle.

Then the log is reopened as the kiosk does at start-up (`VisitLog` then `recover()`; in a quarter of
the trials `recover(stale_after=0)`, a unit switched on again more than 6 hours later, which marks
every open visit 'interrupted') and read back whole against the plans of every trial on that unit:
- lost: a visit of which something the writer reported stored is missing (or a stored visit of an
  earlier trial that has gone since);
- torn: a partial visit visible: a row naming an image that is missing or does not match its hash,
  a finished visit without an outbox item per screened eye (or an outbox item of an unfinished
  visit), a step visible while an earlier one of the plan is not; a failed integrity or foreign-key
  check counts every visit of the unit as torn;
- duplicated: a visit with a row twice, or a row the plan does not have;
- leftovers: after recovery, a temp file of an interrupted write, an image no row names, or any
  other file the data directory should not hold.
The log must hold exactly a prefix of the trial's plan: at least every call reported (else lost) and
at most one more (the call the kill cut short between its commit and its report; more is torn). At the end every image of
every unit is hashed again and every plan checked once more.

SIGKILL stops the process at any instruction but leaves what reached the kernel in place, so these
trials test the order and atomicity of the writes (temp file, fsync, rename, then the row, in one
transaction); that the fsyncs make those writes durable across a real power cut is SQLite's and the
file system's part, on the unit's own storage.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from device.visits.datadir import DataDir
from device.visits.visitlog import EYES, DatabaseCorruptError, VisitLog, encode_masks

DEVICE_ID = "GSE-VISIT-TRIALS"
NEW_UNIT_SHARE = 0.05  # trials that start on a new unit's empty data directory (the first always does)
RESULT = {"gradable": True, "vcdr": 0.52, "glaucoma_probability": 0.31, "referral": "normal",
          "referral_reasons": ["Cup-to-disc ratio 0.52."], "model_versions": {"segmentation": "trial-1.0"}}
_CHILD = "from device.lab.visit_trials import writer; writer()"
SPARE_WRITERS = 2  # writers started ahead, so an interpreter's start-up is not part of a trial's time
_START_S = 60.0  # a writer that has not said "ready" or "open" by then is broken, not slow


# -- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Op:
    """One call of the visit log's API, and what it leaves in the log."""

    kind: str  # patient, visit, capture, result, skip, finish
    visit: int  # the visit's number within its trial
    ident: str  # the patient's identifier
    eye: str = ""
    tag: str = ""  # capture and result: the text that makes this photo's (or overlay's) bytes unique
    photo: str = ""  # capture: its photo's sha256; result: the sha256 of the photo it screens
    overlay: str = ""  # result
    masks: int = -1  # result: which of the sample masks; -1 none
    masks_sha: str = ""
    reason: str = ""  # skip


@dataclass(frozen=True)
class Samples:
    """The bytes a plan draws on: a photo and an overlay (made unique per capture by a JPEG comment), masks."""

    photo: bytes
    overlay: bytes
    masks: tuple[bytes, ...]

    @classmethod
    def make(cls) -> "Samples":
        rng = np.random.default_rng(20250602)
        yy, xx = np.mgrid[:480, :640]
        fundus = np.clip(np.stack([150 + 60 * np.sin(xx / 40.0), 60 + 30 * np.cos(yy / 55.0), 30 + 0 * xx], -1)
                         + rng.normal(0, 18, (480, 640, 3)), 0, 255).astype(np.uint8)
        photo = cv2.imencode(".jpg", fundus, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
        overlay = cv2.imencode(".jpg", fundus[::2, ::2], [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
        masks = []
        for r_disc, r_cup in ((60, 28), (70, 40)):
            d2 = (yy - 240) ** 2 + (xx - 320) ** 2
            masks.append(encode_masks(d2 <= r_disc ** 2, d2 <= r_cup ** 2))
        return cls(photo, overlay, tuple(masks))

    def save(self, folder: Path) -> None:
        (folder / "photo.jpg").write_bytes(self.photo)
        (folder / "overlay.jpg").write_bytes(self.overlay)
        for i, m in enumerate(self.masks):
            (folder / f"masks-{i}.png").write_bytes(m)

    @classmethod
    def load(cls, folder: Path) -> "Samples":
        masks = tuple(p.read_bytes() for p in sorted(folder.glob("masks-*.png")))
        return cls((folder / "photo.jpg").read_bytes(), (folder / "overlay.jpg").read_bytes(), masks)


def tagged(jpeg: bytes, tag: str) -> bytes:
    """The same JPEG with a comment segment holding `tag`: another file, the same picture."""
    text = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def plan(trial: int, seed: int, samples: Samples) -> list[Op]:
    """The calls trial `trial` makes, drawn from `seed`: the writer and the checker both derive it."""
    rng = random.Random(seed)
    ops: list[Op] = []
    for v in range(rng.randint(1, 3)):
        ident = f"VT{trial:05d}-{v}"
        ops += [Op("patient", v, ident), Op("visit", v, ident)]
        for eye in EYES:
            if rng.random() < 0.12:
                ops.append(Op("skip", v, ident, eye, reason=rng.choice(("eye prosthesis", "patient declined"))))
                continue
            takes = rng.choice((1, 1, 1, 2))
            for take in range(takes):
                tag = f"{ident} {eye} {take}"
                photo = _sha(tagged(samples.photo, tag))
                ops.append(Op("capture", v, ident, eye, tag=tag, photo=photo))
                if take == takes - 1 or rng.random() < 0.5:  # a retake may come before or after a result
                    masks = rng.randrange(-1, len(samples.masks))
                    ops.append(Op("result", v, ident, eye, tag=tag, photo=photo,
                                  overlay=_sha(tagged(samples.overlay, tag)), masks=masks,
                                  masks_sha=_sha(samples.masks[masks]) if masks >= 0 else ""))
        if rng.random() < 0.9:  # else the worker walks away and leaves the visit open
            ops.append(Op("finish", v, ident))
    return ops


# -- the writer (a child process) ----------------------------------------------------------------
def carry_out(log: VisitLog, ops: list[Op], samples: Samples, done: Callable[[int], None] = lambda n: None) -> None:
    """Make the plan's calls in order, calling `done(n)` once call n has returned."""
    visits: dict[int, str] = {}
    captures: dict[tuple[int, str], int] = {}
    for n, op in enumerate(ops, 1):
        if op.kind == "patient":
            log.add_patient(op.ident, name="Trial Patient", year_of_birth=1960, sex="F", consent=True)
        elif op.kind == "visit":
            visits[op.visit] = log.start_visit(op.ident, operator="trials", device_id=DEVICE_ID)
        elif op.kind == "capture":
            captures[op.visit, op.eye] = log.add_capture(visits[op.visit], op.eye, tagged(samples.photo, op.tag),
                                                         quality={"gradable": True}, source="trial")
        elif op.kind == "result":
            log.add_result(captures[op.visit, op.eye], RESULT, overlay=tagged(samples.overlay, op.tag),
                           masks_png=samples.masks[op.masks] if op.masks >= 0 else None)
        elif op.kind == "skip":
            log.skip_eye(visits[op.visit], op.eye, op.reason)
        elif op.kind == "finish":
            log.finalize_visit(visits[op.visit])
        done(n)


def writer() -> None:
    """Wait for a job on stdin, then carry out its plan, saying "done N" after call N returns; then idle."""
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line:
        return  # the runner closed the pool
    job = json.loads(line)
    samples = Samples.load(Path(job["samples"]))
    ops = plan(job["trial"], job["seed"], samples)
    log = VisitLog(Path(job["data_dir"]))
    print(f"open {time.monotonic():.6f}", flush=True)
    carry_out(log, ops, samples, lambda n: print(f"done {n} {time.monotonic():.6f}", flush=True))
    print("idle", flush=True)
    sys.stdin.read()  # until killed (or the runner goes away)


# -- reading a log back --------------------------------------------------------------------------
@dataclass
class Snapshot:
    """Everything in one unit's visit log and image store, read once after recovery."""

    patients: dict[str, int]
    visits: dict[int, list[dict]]  # patient id -> visits
    captures: dict[str, list[dict]]  # visit uuid -> captures
    results: dict[int, list[dict]]  # capture id -> results
    skipped: dict[tuple[str, str], str]
    outbox: dict[str, list[dict]]  # visit uuid -> items
    problems: list[str]  # integrity and foreign-key check
    files: dict[str, Path]  # image name -> file
    leftovers: list[str]
    rows: dict[str, set]  # table -> keys of every row, to find the ones no plan accounts for

    @classmethod
    def read(cls, log: VisitLog) -> "Snapshot":
        db = log.db
        problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall() if r[0] != "ok"]
        problems += [f"foreign key: {tuple(r)}" for r in db.execute("PRAGMA foreign_key_check").fetchall()]
        patients = {r["identifier"]: r["id"] for r in db.query("SELECT id, identifier FROM patients")}
        visits: dict[int, list[dict]] = defaultdict(list)
        for r in db.query("SELECT uuid, patient_id, status FROM visits ORDER BY rowid"):
            visits[r["patient_id"]].append(r)
        captures: dict[str, list[dict]] = defaultdict(list)
        for r in db.query("SELECT id, visit_uuid, eye, photo_sha256 FROM captures ORDER BY id"):
            captures[r["visit_uuid"]].append(r)
        results: dict[int, list[dict]] = defaultdict(list)
        for r in db.query("SELECT id, capture_id, overlay_sha256, masks_sha256 FROM results ORDER BY id"):
            results[r["capture_id"]].append(r)
        skipped = {(r["visit_uuid"], r["eye"]): r["reason"] for r in db.query("SELECT * FROM skipped_eyes")}
        outbox: dict[str, list[dict]] = defaultdict(list)
        for r in db.query("SELECT id, visit_uuid, eye, capture_id, result_id FROM outbox ORDER BY id"):
            outbox[r["visit_uuid"]].append(r)
        rows = {"patients": set(patients.values()),
                "visits": {v["uuid"] for vs in visits.values() for v in vs},
                "captures": {c["id"] for cs in captures.values() for c in cs},
                "results": {r["id"] for rs in results.values() for r in rs},
                "skipped": set(skipped), "outbox": {o["id"] for os_ in outbox.values() for o in os_}}
        named = ({c["photo_sha256"] for cs in captures.values() for c in cs}
                 | {r[k] for rs in results.values() for r in rs for k in ("overlay_sha256", "masks_sha256") if r[k]})
        files, leftovers = _store_files(DataDir(log.data_dir), named)
        return cls(patients, visits, captures, results, skipped, outbox, problems, files, leftovers, rows)


def _store_files(data: DataDir, named: set[str]) -> tuple[dict[str, Path], list[str]]:
    """The image store's files by name, and every file in the data directory that should not be there:
    temp files, images no row names, anything else."""
    files: dict[str, Path] = {}
    leftovers = []
    db_files = {DataDir.VISITS_DB, DataDir.VISITS_DB + "-wal", DataDir.VISITS_DB + "-shm"}
    for path in sorted(data.root.rglob("*")):
        rel = path.relative_to(data.root)
        if path.is_dir():
            if rel.parts[0] != DataDir.IMAGES or len(rel.parts) > 2 or (len(rel.parts) == 2 and len(rel.name) != 2):
                leftovers.append(str(rel))
            continue
        if len(rel.parts) == 1 and rel.name in db_files:
            continue
        if len(rel.parts) == 3 and rel.parts[0] == DataDir.IMAGES and rel.name in named and rel.parts[1] == rel.name[:2]:
            files[rel.name] = path
            continue
        leftovers.append(str(rel))
    return files, leftovers


@dataclass
class Observed:
    """One trial's plan read back: how many of its calls are in the log, and what is wrong with its visits."""

    committed: int
    lost: set[int] = field(default_factory=set)
    torn: set[int] = field(default_factory=set)
    duplicated: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


class _Checker:
    """Reads plans against a snapshot, marking every row a plan accounts for."""

    def __init__(self, snap: Snapshot, hash_images: set[str] | None, stale_recovery: bool = False):
        self.snap = snap
        self.stale_recovery = stale_recovery  # recover(stale_after=0) ran: no visit may be left open
        self.hash_images = hash_images  # None: hash every image
        self.accounted: dict[str, set] = defaultdict(set)
        self._hashed: dict[str, bool] = {}

    def image_ok(self, sha: str) -> bool:
        path = self.snap.files.get(sha)
        if path is None:
            return False
        if self.hash_images is not None and sha not in self.hash_images:
            return True
        if sha not in self._hashed:
            try:
                self._hashed[sha] = _sha(path.read_bytes()) == sha
            except OSError:
                self._hashed[sha] = False
        return self._hashed[sha]

    def observe(self, ops: list[Op], trial: int) -> Observed:
        """Which calls of `ops` the log shows (present/absent per call) and what is torn or twice there."""
        snap = self.snap
        seen: list[bool] = []
        out = Observed(committed=0)

        def note(visit: int, what: set[int], text: str) -> None:
            what.add(visit)
            out.notes.append(f"trial {trial} visit {visit}: {text}")

        by_visit: dict[int, list[Op]] = defaultdict(list)
        for op in ops:
            by_visit[op.visit].append(op)
        state: dict[int, dict] = {}
        for op in ops:
            st = state.setdefault(op.visit, {"visit": None, "captures": {}, "results": {}})
            present = False
            if op.kind == "patient":
                pid = snap.patients.get(op.ident)
                present = pid is not None
                if present:
                    self.accounted["patients"].add(pid)
                    st["patient"] = pid
            elif op.kind == "visit":
                rows = snap.visits.get(st.get("patient", -1), [])
                present = bool(rows)
                if len(rows) > 1:
                    note(op.visit, out.duplicated, f"{len(rows)} visits of patient {op.ident}")
                if present:
                    st["visit"] = rows[0]
                    self.accounted["visits"].update(r["uuid"] for r in rows)
            elif op.kind == "capture" and st["visit"] is not None:
                rows = [c for c in snap.captures.get(st["visit"]["uuid"], []) if c["photo_sha256"] == op.photo]
                present = bool(rows)
                if len(rows) > 1:
                    note(op.visit, out.duplicated, f"photo {op.tag!r} captured {len(rows)} times")
                if present:
                    if rows[0]["eye"] != op.eye:
                        note(op.visit, out.torn, f"photo {op.tag!r} stored as the {rows[0]['eye']} eye")
                    if not self.image_ok(op.photo):
                        note(op.visit, out.torn, f"photo {op.tag!r} missing or damaged in the image store")
                    st["captures"][op.tag] = rows[0]
                    self.accounted["captures"].update(c["id"] for c in rows)
            elif op.kind == "result" and op.tag in st["captures"]:
                rows = snap.results.get(st["captures"][op.tag]["id"], [])
                present = bool(rows)
                if len(rows) > 1:
                    note(op.visit, out.duplicated, f"{len(rows)} results for photo {op.tag!r}")
                if present:
                    r = rows[0]
                    if r["overlay_sha256"] != op.overlay or (r["masks_sha256"] or "") != op.masks_sha:
                        note(op.visit, out.torn, f"the result of photo {op.tag!r} names other images")
                    for sha in (op.overlay, op.masks_sha):
                        if sha and not self.image_ok(sha):
                            note(op.visit, out.torn, f"image {sha[:12]} of photo {op.tag!r}'s result missing or damaged")
                    st["results"][op.tag] = r
                    self.accounted["results"].update(x["id"] for x in rows)
            elif op.kind == "skip" and st["visit"] is not None:
                key = (st["visit"]["uuid"], op.eye)
                present = snap.skipped.get(key) == op.reason
                if present:
                    self.accounted["skipped"].add(key)
            elif op.kind == "finish" and st["visit"] is not None:
                present = st["visit"]["status"] == "finished"
            seen.append(present)
        # A prefix of the plan, and nothing after it
        committed = seen.index(False) if False in seen else len(seen)
        out.committed = committed
        for i in range(committed, len(ops)):
            if seen[i]:
                note(ops[i].visit, out.torn, f"call {i + 1} ({ops[i].kind}) is in the log but call {committed + 1} is not")
        # Per visit: the outbox matches the finish, and no row the plan does not have
        for v, st in state.items():
            row = st["visit"]
            if row is None:
                continue
            uuid = row["uuid"]
            items = snap.outbox.get(uuid, [])
            self.accounted["outbox"].update(o["id"] for o in items)
            finished = row["status"] == "finished"
            if row["status"] == "open" and self.stale_recovery:
                note(v, out.torn, "an unfinished visit still open after a recovery that interrupts them all")
            expected = set()
            if finished:
                latest: dict[str, dict] = {}
                for c in snap.captures.get(uuid, []):
                    latest[c["eye"]] = c  # ordered by id: the last is the latest
                for eye, c in latest.items():
                    rs = snap.results.get(c["id"], [])
                    if rs and (uuid, eye) not in snap.skipped:
                        expected.add((eye, c["id"], rs[0]["id"]))
            got = {(o["eye"], o["capture_id"], o["result_id"]) for o in items}
            if len(items) != len(got) or got != expected:
                note(v, out.torn, f"{'finished' if finished else 'unfinished'} visit with outbox {sorted(got)}, "
                                  f"expected {sorted(expected)}")
            planned = {op.photo for op in by_visit[v] if op.kind == "capture"}
            with_result = {op.tag for op in by_visit[v] if op.kind == "result"}
            stray = {"captures": [c["id"] for c in snap.captures.get(uuid, []) if c["photo_sha256"] not in planned],
                     "results": [r["id"] for tag, c in st["captures"].items() for r in snap.results.get(c["id"], [])
                                 if tag not in with_result],
                     "skipped": [(uuid, eye) for eye in EYES if (uuid, eye) in snap.skipped
                                 and not any(op.kind == "skip" and op.eye == eye for op in by_visit[v])]}
            if any(stray.values()):
                note(v, out.duplicated, f"rows the plan does not have: {stray}")
                for table, keys in stray.items():
                    self.accounted[table].update(keys)  # counted with their visit, not again on their own
        return out

    def strays(self) -> list[str]:
        """Rows no plan accounted for."""
        return [f"{table} {key}" for table, keys in self.snap.rows.items() for key in sorted(keys - self.accounted[table], key=str)]


def _visits_between(ops: list[Op], start: int, stop: int) -> set[int]:
    return {op.visit for op in ops[start:stop]}


# -- the trials ----------------------------------------------------------------------------------
@dataclass
class TrialRecord:
    trial: int
    seed: int
    ops: list[Op]
    committed: int  # calls in the log after this trial's recovery: what every later check must find


@dataclass
class Unit:
    data_dir: Path
    trials: list[TrialRecord] = field(default_factory=list)


class _Writer:
    """A writer process started ahead of its trial, waiting for its job (the interpreter's start-up is
    not part of what a trial measures). Its stdout is read unbuffered, line by line: a buffered reader
    would hold a line that select() then no longer sees."""

    def __init__(self, cwd: Path):
        self._stderr = tempfile.TemporaryFile()  # a full pipe would stall a writer that warns
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, cwd=cwd, bufsize=0)
        self.lines: list[str] = []
        self._pending = b""

    def send(self, job: dict) -> None:
        assert self.proc.stdin is not None  # stdin=PIPE
        self.proc.stdin.write(json.dumps(job).encode() + b"\n")
        self.lines.clear()

    def readline(self, timeout: float) -> str | None:
        """The next line it says; None at the end of its output or after `timeout` seconds of silence."""
        assert self.proc.stdout is not None  # stdout=PIPE
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + timeout
        while b"\n" not in self._pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                return None
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        self.lines.append(line.decode().strip())
        return self.lines[-1]

    def kill(self) -> str:
        """SIGKILL, then everything it said; its stderr (a traceback) if it died on its own first."""
        died_before = self.proc.poll() is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        rest = self._pending + self.proc.stdout.read()
        self.lines += [x.decode().strip() for x in rest.splitlines()]
        self._pending = b""
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace") if died_before else ""
        for f in (self.proc.stdin, self.proc.stdout, self._stderr):
            f.close()
        return err

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.close()  # a waiting writer then exits
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._stderr.close()


class Trials:
    """The trial loop: units (data directories) in `workdir`, kills drawn from `rng`."""

    def __init__(self, workdir: Path, rng: random.Random):
        self.workdir = Path(workdir)
        self.rng = rng
        self.samples = Samples.make()
        self.samples_dir = self.workdir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        self.samples.save(self.samples_dir)
        self.units: list[Unit] = []
        self.stats: Counter[str] = Counter()
        # what is wrong, each thing once however many checks see it: (trial, visit), a stray row or a file
        self.found: dict[str, set] = {"lost": set(), "torn": set(), "duplicated": set(), "leftovers": set()}
        self.notes: list[str] = []
        self.op_seconds: list[float] = []
        self.trial_seconds: list[float] = []
        self._cwd = Path(__file__).resolve().parents[2]
        self._spares: list[_Writer] = []

    def close(self) -> None:
        while self._spares:
            self._spares.pop().close()

    def _writer(self) -> _Writer:
        while len(self._spares) < 1 + SPARE_WRITERS:  # the next ones start while this trial runs
            self._spares.append(_Writer(self._cwd))
        writer = self._spares.pop(0)
        if writer.readline(_START_S) != "ready":
            writer.kill()
            raise RuntimeError("the visit writer did not start")
        return writer

    def _op_time(self) -> float:
        return statistics.median(self.op_seconds[-200:]) if self.op_seconds else 0.01

    def run_trial(self, n: int) -> None:
        began = time.monotonic()
        rng = self.rng
        new_unit = not self.units or rng.random() < NEW_UNIT_SHARE
        if new_unit:
            self.units.append(Unit(self.workdir / f"unit-{len(self.units)}"))
            self.stats["units"] += 1
        unit = self.units[-1]
        seed = rng.getrandbits(32)
        ops = plan(n, seed, self.samples)
        # Progress lines: "open", then "done 1".."done N", then "idle"; the kill falls after line `after`
        # (0: while the log opens) and a seeded part of one call's time.
        after = 0 if new_unit and rng.random() < 0.5 else rng.randrange(len(ops) + 2)
        delay = rng.uniform(0.0, 1.5) * self._op_time()
        writer = self._writer()
        writer.send({"trial": n, "seed": seed, "data_dir": str(unit.data_dir), "samples": str(self.samples_dir)})
        while len(writer.lines) < after:
            if writer.readline(_START_S) is None:
                break  # it died: kill() collects why
        time.sleep(delay)
        error = writer.kill()
        if error:
            raise RuntimeError(f"the visit writer failed on its own in trial {n}:\n{error}")
        lines = writer.lines
        stamps = [float(x.split()[-1]) for x in lines if x.startswith(("open ", "done "))]
        self.op_seconds += [b - a for a, b in zip(stamps, stamps[1:])]
        reported = sum(x.startswith("done ") for x in lines)
        if not any(x.startswith("open") for x in lines):
            landed = "open"
        else:
            landed = ops[reported].kind if reported < len(ops) else "idle"
        self.stats[f"killed_in_{landed}"] += 1
        self.stats["temp_files_before_recovery"] += sum(1 for _ in (unit.data_dir / DataDir.IMAGES).glob("*/*.tmp"))
        record = TrialRecord(n, seed, ops, committed=reported)
        # The unit comes back as the kiosk starts, now and then after more than the 6 hours that make an
        # open visit 'interrupted' (recover(stale_after=0) stands for that)
        observed = self.check(unit, current=record, stale=rng.random() < 0.25)
        if observed is not None:
            record.committed = max(observed.committed, reported)
            if observed.committed == reported + 1:
                self.stats["stored_but_not_reported"] += 1  # the kill fell between a commit and its report
            elif observed.committed > reported + 1:  # calls the writer never reached are in the log
                self.found["torn"] |= {(n, v) for v in _visits_between(ops, reported + 1, observed.committed)}
                self.notes.append(f"trial {n}: {observed.committed} calls stored, {reported} reported")
        unit.trials.append(record)
        self.stats["trials"] += 1
        self.stats["calls_reported"] += reported
        self.stats["visits_finished"] += sum(op.kind == "finish" for op in ops[:record.committed])
        self.stats["visits_unfinished"] += sum(op.kind == "visit" for op in ops[:record.committed]) - sum(
            op.kind == "finish" for op in ops[:record.committed])
        self.trial_seconds.append(time.monotonic() - began)

    def check(self, unit: Unit, current: TrialRecord | None = None, hash_all: bool = False,
              stale: bool = False) -> Observed | None:
        """Reopen the unit's log as the kiosk does, recover, and read back every trial's plan on it. Adds to
        the counts; returns what the current trial's plan shows (None when the log could not be read)."""
        try:
            with VisitLog(unit.data_dir) as log:
                recovery = log.recover(stale_after=0) if stale else log.recover()
                snap = Snapshot.read(log)
        except DatabaseCorruptError as exc:
            self.stats["integrity_failures"] += 1
            for r in unit.trials + ([current] if current else []):
                self.found["torn"] |= {(r.trial, v) for v in _visits_between(r.ops, 0, r.committed)}
            self.notes.append(f"{unit.data_dir.name}: {exc}")
            unit.trials = []  # nothing on it can be judged any more
            return None
        self.stats["orphans_swept"] += recovery["orphans_removed"]
        hashes = None
        if not hash_all:
            hashes = {sha for op in (current.ops if current else []) for sha in (op.photo, op.overlay, op.masks_sha) if sha}
        checker = _Checker(snap, hashes, stale_recovery=stale)
        self.stats["visits_interrupted_by_recovery"] += recovery["interrupted"]
        observed_current = None
        for record in unit.trials + ([current] if current else []):
            obs = checker.observe(record.ops, record.trial)
            at_least = record.committed
            if obs.committed < at_least:
                obs.lost |= _visits_between(record.ops, obs.committed, at_least)
                obs.notes.append(f"trial {record.trial}: {obs.committed} calls in the log, {at_least} were stored")
            if record is not current and obs.committed > at_least:
                obs.duplicated |= _visits_between(record.ops, at_least, obs.committed)
                obs.notes.append(f"trial {record.trial}: {obs.committed} calls in the log now, {at_least} before")
            if snap.problems:
                obs.torn |= _visits_between(record.ops, 0, max(obs.committed, at_least))
            for what in ("lost", "torn", "duplicated"):
                self.found[what] |= {(record.trial, v) for v in getattr(obs, what)}
            self._note(obs.notes)
            if record is current:
                observed_current = obs
        strays = checker.strays()
        self.found["duplicated"] |= {(unit.data_dir.name, s) for s in strays}
        self.found["leftovers"] |= {(unit.data_dir.name, f) for f in snap.leftovers}
        self._note([f"{unit.data_dir.name}: {p}" for p in snap.problems])
        self._note([f"{unit.data_dir.name}: a row no plan has: {s}" for s in strays])
        self._note([f"{unit.data_dir.name}: left over after recovery: {f}" for f in snap.leftovers])
        return observed_current

    def _note(self, notes: list[str]) -> None:
        self.notes += [n for n in notes if n not in self.notes]

    def counts(self) -> dict[str, int]:
        return {what: len(keys) for what, keys in self.found.items()}

    def run(self, trials: int) -> dict:
        started = time.monotonic()
        try:
            for n in range(trials):
                self.run_trial(n)
        finally:
            self.close()
        per_trial = sorted(self.trial_seconds)
        before = self.counts()
        for unit in self.units:  # every unit once more, every image hashed
            self.check(unit, hash_all=True)
        counts = self.counts()
        return {
            "trials": self.stats["trials"],
            **counts,
            "found_only_by_the_final_check": {k: counts[k] - before[k] for k in counts},
            "visits_finished": self.stats["visits_finished"],
            "visits_unfinished": self.stats["visits_unfinished"],
            "calls_reported": self.stats["calls_reported"],
            "kills": {k.removeprefix("killed_in_"): v for k, v in sorted(self.stats.items()) if k.startswith("killed_in_")},
            "stored_but_not_reported": self.stats["stored_but_not_reported"],
            "temp_files_before_recovery": self.stats["temp_files_before_recovery"],
            "orphans_swept": self.stats["orphans_swept"],
            "visits_interrupted_by_recovery": self.stats["visits_interrupted_by_recovery"],
            "integrity_failures": self.stats["integrity_failures"],
            "units": len(self.units),
            "seconds": round(time.monotonic() - started, 1),
            "seconds_per_trial": {"p50": round(statistics.median(per_trial), 3) if per_trial else None,
                                  "max": round(per_trial[-1], 3) if per_trial else None},
            "ms_per_call": round(1000 * self._op_time(), 1),
            "problems": self.notes[:50],
        }


def main(argv: list[str] | None = None) -> int:
    from device.lab.trials import failed, summary_line

    parser = argparse.ArgumentParser(prog="glaucoscreen trials visits", description=__doc__.splitlines()[0],
                                     epilog="device.lab.visit_trials")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--seed", type=int, default=None, help="the same seed draws the same plans and kill points")
    parser.add_argument("--json-out", type=Path, default=None, help="write the counts and the details as JSON")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="keep the trials' data directories in this new or empty folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        parser.error(f"--data-dir {args.data_dir} is not empty")
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    with tempfile.TemporaryDirectory(prefix="glaucoscreen-visit-trials-") as tmp:
        out = {"seed": seed, **Trials(args.data_dir or Path(tmp), random.Random(seed)).run(args.trials)}
    print(summary_line("visit trials", out, out["seconds"]))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    return 1 if failed(out) else 0


if __name__ == "__main__":
    sys.exit(main())
