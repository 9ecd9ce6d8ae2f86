"""Randomized crash and fault trials of sync against a real Orthanc: every visit must arrive exactly once.

    glaucoscreen trials sync --trials 200 [--json-out FILE] [--data DIR] [--seed N]

A clinic's unit loses power, has its sync killed by the OOM killer, and talks to a PACS that goes
down, answers 500, hangs, or refuses a request. Each trial adds a few visits (the kiosk keeps
working) and then does one of:
- kill: `sync_once` runs in a child process (a fresh interpreter, as the sync service is) and is
  killed with SIGKILL at a random moment of its run, sometimes while the PACS misbehaves too;
- fault: a run through a proxy that answers an error status, hangs past the timeout, drops the
  connection, or refuses the request (quarantine; the worker later presses "retry");
- down: a run while Orthanc is not running at all; Orthanc is then started again.
The simulated clock moves two hours per trial so every backoff is due. At the end the quarantined
items are requeued, sync runs until the outbox is empty, and Orthanc's studies and instances are
compared with the outbox. All four counts must be 0:
- lost: an eye of the outbox of which the PACS holds nothing;
- torn: an eye the PACS holds only in part (not all of its photo, segmentation and report);
- duplicated: any instance or study the outbox does not account for, or an item marked sent twice;
- leftovers: a process a killed run started (an encoding worker) still alive after it, or a temp
  file in the unit's data directory.
It also measures the sync throughput to the local Orthanc on a clean queue (`--throughput-visits 0`
leaves it out).

This is a development tool run from a source checkout: it starts Orthanc and the fault proxy with
the test suite's helpers (tests/orthanc.py), and reads fundus photos from the shared data folder.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import requests

from device.config import SyncConfig
from device.outbox.dicom import study_uids
from device.outbox.sync import client_from_config, sync_once
from device.visits.visitlog import EYES, VisitLog
from models.datasets import decode_mask, vcdr_from_masks

if TYPE_CHECKING:
    from tests.orthanc import FaultProxy, OrthancServer

DEVICE_ID = "GSE-TRIALS"
TRIAL_MARK = "GLAUCOSCREEN_SYNC_TRIAL"  # marks every process a killed sync run started
FAULTS = ("500", "503", "429", "hang", "drop", "400", "413", "401")
_CHILD = "import sys; from device.lab.sync_trials import child_sync; child_sync(sys.argv[1])"


@dataclass(frozen=True)
class SampleEye:
    """A real fundus photo, its experts' disc/cup masks and a result a screening could have given."""

    photo_jpeg: bytes
    masks_png: bytes
    result: dict


def sample_eyes(data_dir: Path, count: int) -> list[SampleEye]:
    """`count` REFUGE photos from the shared data's refuge-val folder, with their masks."""
    folder = Path(data_dir) / "refuge-val"
    if not (folder / "labels.csv").exists():
        raise FileNotFoundError(f"no REFUGE photos at {folder} (expected labels.csv, images/, masks/)")
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:count]
    eyes = []
    for row in rows:
        masks_png = (folder / "masks" / f"{row['id']}.png").read_bytes()
        mask = cv2.imdecode(np.frombuffer(masks_png, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise ValueError(f"{folder / 'masks' / (row['id'] + '.png')} is not a readable PNG")
        disc, cup = decode_mask(mask)
        vcdr = round(vcdr_from_masks(disc, cup), 4)
        probability = round(min(0.99, max(0.01, (vcdr - 0.3) * 1.6)), 4)
        referral = "refer" if probability >= 0.5 else "normal"
        eyes.append(SampleEye((folder / "images" / f"{row['id']}.jpg").read_bytes(), masks_png, {
            "gradable": True, "vcdr": vcdr, "glaucoma_probability": probability, "referral": referral,
            "referral_reasons": [f"Cup-to-disc ratio {vcdr:.2f}; glaucoma risk {probability:.0%}."],
            "model_versions": {"segmentation": "trial-1.0", "referral": "trial-op"}}))
    return eyes


def add_visits(visits: VisitLog, eyes: list[SampleEye], count: int, rng: random.Random,
               device_id: str = DEVICE_ID) -> list[str]:
    """`count` finished visits of new patients, both eyes screened, through the visit log's own API."""
    made = []
    for _ in range(count):
        patient = f"TRIAL-{rng.getrandbits(48):012x}"
        visits.add_patient(patient, name="Trial Patient", year_of_birth=rng.randint(1940, 1990),
                           sex=rng.choice("FM"), consent=True)
        visit = visits.start_visit(patient, operator="trials", device_id=device_id)
        for eye in EYES:
            sample = rng.choice(eyes)
            capture = visits.add_capture(visit, eye, sample.photo_jpeg, quality={"gradable": True})
            visits.add_result(capture, sample.result, masks_png=sample.masks_png)
        visits.finalize_visit(visit)
        made.append(visit)
    return made


def child_sync(arguments: str) -> None:
    """One sync run in its own process, the way the sync service runs: what a trial kills."""
    args = json.loads(arguments)
    cfg = SyncConfig(url=args["url"], username=args["username"], password_file=args["password_file"],
                     timeout_s=args["timeout_s"])
    client = client_from_config(cfg)
    with VisitLog(Path(args["data_dir"])) as visits:
        print("ready", flush=True)
        report = sync_once(visits, client, device_id=DEVICE_ID, now=dt.datetime.fromisoformat(args["now"]),
                           rng=random.Random(args["seed"]))
    print(json.dumps(report.to_dict()), flush=True)


class PacsContents:
    """What Orthanc holds, read through its REST API: StudyInstanceUID -> number of instances."""

    def __init__(self, server: "OrthancServer"):
        self.server = server

    def _get(self, path: str):
        r = requests.get(f"{self.server.rest}{path}", auth=self.server.auth, timeout=30)
        r.raise_for_status()
        return r.json()

    def studies(self) -> Counter:
        studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"] for s in self._get("/studies?expand")}
        counts = Counter({uid: 0 for uid in studies.values()})
        for series in self._get("/series?expand"):
            counts[studies[series["ParentStudy"]]] += len(series["Instances"])
        return counts


class Trials:
    """The trial loop over one visit log and one Orthanc (reached directly or through the fault proxy)."""

    def __init__(self, server: "OrthancServer", proxy: "FaultProxy", workdir: Path, eyes: list[SampleEye],
                 rng: random.Random, timeout_s: float = 2.0):
        self.server, self.proxy, self.eyes, self.rng = server, proxy, eyes, rng
        self.workdir = Path(workdir)
        self.data_dir = self.workdir / "unit"
        self.password_file = self.workdir / "pacs-password"
        self.password_file.write_text(server.password + "\n")
        self.password_file.chmod(0o600)
        self.timeout_s = timeout_s
        self.now = dt.datetime.now(dt.timezone.utc)
        self.visits = VisitLog(self.data_dir)
        self.pacs = PacsContents(server)
        self.stats: Counter[str] = Counter()

    def close(self) -> None:
        self.visits.close()

    def _config(self, via_proxy: bool) -> SyncConfig:
        url = self.proxy.url_for(self.server.url) if via_proxy else self.server.url
        return SyncConfig(url=url, username=self.server.username, password_file=str(self.password_file),
                          timeout_s=self.timeout_s)

    # -- trial kinds ---------------------------------------------------------------------------
    def _kill_trial(self) -> None:
        via_proxy = self.rng.random() < 0.4
        if via_proxy:
            self.proxy.fail_next(self.rng.randint(1, 2), self.rng.choice(("500", "503", "hang", "drop")))
        cfg = self._config(via_proxy)
        args = {"data_dir": str(self.data_dir), "url": cfg.url, "username": cfg.username,
                "password_file": cfg.password_file, "timeout_s": cfg.timeout_s, "now": self.now.isoformat(),
                "seed": self.rng.getrandbits(32)}
        mark = f"{os.getpid()}-{self.stats['trials']}"
        child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(args)], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, cwd=Path(__file__).resolve().parents[2],
                                 env={**os.environ, TRIAL_MARK: mark})
        stdout = child.stdout
        assert stdout is not None  # stdout=PIPE
        try:
            ready, _, _ = select.select([stdout], [], [], 60)
            if not ready or stdout.readline().strip() != "ready":
                raise RuntimeError("the sync child process did not start")
            due = self.visits.outbox_counts()["pending"]
            time.sleep(self.rng.uniform(0.0, 0.05 + 0.12 * due))  # anywhere in its run, or after it
            killed = child.poll() is None
            child.send_signal(signal.SIGKILL)
            child.wait(30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            stdout.close()
        self.stats["kills_mid_run" if killed else "runs_finished_before_kill"] += 1
        self.stats["processes_left_behind"] += len(survivors(mark, grace_s=5.0))
        # Items the PACS holds but the outbox still has pending: the crash fell between "stored" and
        # "marked sent", the case that idempotent UIDs exist for.
        held = self.pacs.studies()
        self.stats["stored_but_not_marked"] += sum(
            study_uids(i["visit_uuid"], i["eye"])["study"] in held for i in self.visits.outbox_pending(10_000))

    def _fault_trial(self) -> None:
        fault = self.rng.choice(FAULTS)
        self.proxy.fail_next(1, fault)
        client = client_from_config(self._config(via_proxy=True))
        try:
            report = sync_once(self.visits, client, device_id=DEVICE_ID, now=self.now, rng=self.rng)
        finally:
            client.close()
        self.stats[f"fault_{fault}"] += 1
        self.stats["quarantined"] += report.quarantined

    def _down_trial(self) -> None:
        self.server.stop()
        client = client_from_config(self._config(via_proxy=False))
        try:
            report = sync_once(self.visits, client, device_id=DEVICE_ID, now=self.now, rng=self.rng)
        finally:
            client.close()
            self.server.start()
        if report.sent or (report.attempted and not report.stopped):
            raise AssertionError(f"a sync with the PACS down sent something or did not stop: {report}")
        self.stats["pacs_down"] += 1

    def _requeue_quarantined(self) -> int:
        rows = self.visits.outbox_items("quarantined")
        for row in rows:
            self.visits.outbox_requeue(row["id"])
        return len(rows)

    # -- the run -------------------------------------------------------------------------------
    def run(self, trials: int, visits_at_start: int = 4) -> dict:
        add_visits(self.visits, self.eyes, visits_at_start, self.rng)
        for _ in range(trials):
            self.proxy.fail_next(0, "500")  # a fault left over from a killed run ends with its trial
            add_visits(self.visits, self.eyes, self.rng.choice((0, 0, 1, 1, 2)), self.rng)
            self.now += dt.timedelta(hours=2)
            kind = self.rng.choices(("kill", "fault", "down"), weights=(0.6, 0.33, 0.07))[0]
            getattr(self, f"_{kind}_trial")()
            self.stats["trials"] += 1
            if self.rng.random() < 0.3:
                self.stats["requeued"] += self._requeue_quarantined()
        return self.settle()

    def settle(self) -> dict:
        """Requeue what is quarantined, sync until the outbox is empty, then compare the PACS with the outbox."""
        self.proxy.fail_next(0, "500")
        self.stats["requeued"] += self._requeue_quarantined()
        client = client_from_config(self._config(via_proxy=False))
        try:
            for _ in range(20):
                self.now += dt.timedelta(hours=2)
                report = sync_once(self.visits, client, device_id=DEVICE_ID, now=self.now, rng=self.rng)
                if report.pending == 0 and report.quarantined_total == 0:
                    break
        finally:
            client.close()
        return self.verdict()

    def verdict(self) -> dict:
        items = self.visits.outbox_items()
        held = self.pacs.studies()
        expected = {study_uids(i["visit_uuid"], i["eye"])["study"]: i for i in items}
        per_item = 3  # photo, segmentation, report: every trial eye has masks
        lost = [i["id"] for uid, i in expected.items() if held.get(uid, 0) == 0]
        torn = [i["id"] for uid, i in expected.items() if 0 < held.get(uid, 0) < per_item]
        temp_files = [str(p.relative_to(self.data_dir)) for p in self.data_dir.rglob("*.tmp")]
        extra_instances = sum(max(0, n - per_item) for uid, n in held.items() if uid in expected)
        extra_studies = [uid for uid in held if uid not in expected]
        sent_twice = [i["id"] for i in items
                      if sum(a["outcome"] == "sent" for a in self.visits.outbox_attempts(i["id"])) > 1]
        visits = {i["visit_uuid"] for i in items}
        return {
            "trials": self.stats["trials"],
            "visits_created": len(visits),
            "eyes_created": len(items),
            "eyes_sent": sum(i["status"] == "sent" for i in items),
            "visits_sent": len(visits - {i["visit_uuid"] for i in items if i["status"] != "sent"}),
            "lost": len(lost),
            "torn": len(torn),
            "duplicated": extra_instances + len(extra_studies) * per_item + len(sent_twice),
            "leftovers": self.stats["processes_left_behind"] + len(temp_files),
            "temp_files": temp_files,
            "studies_in_pacs": len(held),
            "instances_in_pacs": sum(held.values()),
            "stats": dict(sorted(self.stats.items())),
        }


def survivors(mark: str, grace_s: float) -> list[int]:
    """PIDs of processes started by a killed sync run (they carry its TRIAL_MARK in their environment:
    the encoding workers and the fork server) still alive after `grace_s`."""
    needle = f"{TRIAL_MARK}={mark}".encode()
    end = time.monotonic() + grace_s
    while True:
        alive = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    if needle in (proc / "environ").read_bytes().split(b"\0"):
                        alive.append(int(proc.name))
                except OSError:
                    pass  # gone meanwhile, or not ours to read
        if not alive or time.monotonic() > end:
            return alive
        time.sleep(0.1)


def measure_throughput(server: "OrthancServer", workdir: Path, eyes: list[SampleEye], visits_count: int,
                       rng: random.Random) -> dict:
    """Visits per second that one sync run sends to the PACS from a queue of `visits_count` finished visits."""
    password_file = Path(workdir) / "pacs-password"
    password_file.write_text(server.password)
    password_file.chmod(0o600)
    cfg = SyncConfig(url=server.url, username=server.username, password_file=str(password_file), timeout_s=30)
    client = client_from_config(cfg)
    with VisitLog(Path(workdir) / "unit") as visits:
        add_visits(visits, eyes, visits_count, rng)
        report = sync_once(visits, client, device_id=DEVICE_ID, rng=rng)
    client.close()
    if report.sent != 2 * visits_count:
        raise RuntimeError(f"the throughput run sent {report.sent} of {2 * visits_count} eyes: {report}")
    return {"visits": visits_count, "eyes": report.sent, "seconds": report.elapsed_s,
            "visits_per_s": round(visits_count / report.elapsed_s, 2),
            "eyes_per_s": round(report.sent / report.elapsed_s, 2)}


def main(argv: list[str] | None = None) -> int:
    from device.lab.trials import failed, summary_line

    parser = argparse.ArgumentParser(prog="glaucoscreen trials sync", description=__doc__.splitlines()[0],
                                     epilog="device.lab.sync_trials")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--throughput-visits", type=int, default=40, help="0: do not measure the throughput")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--data", type=Path, default=None, help="the shared fundus data folder (holds refuge-val/)")
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="show sync's own log (every fault it meets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.CRITICAL, format="%(name)s: %(message)s")
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    if args.throughput_visits < 0:
        parser.error("--throughput-visits must be 0 or more")
    # The installed `glaucoscreen` script's import path holds the installed packages, not the checkout's
    # root where tests/ lives; put it there when this module runs from a checkout that has them.
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "tests" / "orthanc.py").is_file() and str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    try:
        from tests.conftest import shared_data_dir
        from tests.orthanc import FaultProxy, OrthancServer
    except ImportError as exc:
        print(f"sync_trials runs from a source checkout (it needs the test suite's Orthanc helpers): {exc}",
              file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    eyes = sample_eyes(args.data or shared_data_dir(), 24)
    with tempfile.TemporaryDirectory(prefix="glaucoscreen-sync-trials-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "orthanc").mkdir()
        server = OrthancServer(tmp / "orthanc")
        server.start()
        proxy = FaultProxy(server.rest, hang_seconds=3.0).start()
        try:
            throughput = None
            if args.throughput_visits:
                (tmp / "throughput").mkdir()
                throughput = measure_throughput(server, tmp / "throughput", eyes, args.throughput_visits, rng)
                server.clear()
            (tmp / "trials").mkdir()
            trials = Trials(server, proxy, tmp / "trials", eyes, rng)
            started = time.monotonic()
            try:
                verdict = trials.run(args.trials)
            finally:
                trials.close()
        finally:
            proxy.stop()
            server.stop()
    out = {"seed": seed, **verdict, "trials_seconds": round(time.monotonic() - started, 1), "throughput": throughput}
    line = summary_line("sync trials", out, out["trials_seconds"])
    if throughput is not None:
        line += f"; {throughput['eyes_per_s']} eyes/s to the local Orthanc"
    print(line)
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    return 1 if failed(out) else 0


if __name__ == "__main__":
    sys.exit(main())
