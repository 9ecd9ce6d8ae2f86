"""Sync: empty the visit log's outbox into the reading centre's PACS over DICOMweb (STOW-RS).

One outbox item is one eye of one finished visit, sent as one STOW-RS request of its photo, disc/cup
Segmentation and structured report. What each answer does to the item:
- stored: marked sent.
- retry (no answer, a timeout, 5xx, 429, ...): the item waits for a later run, exponentially longer
  after each failure (30 s doubling to 1 h, "full jitter" so units that lost the same network do not
  come back in step), or as long as the PACS's Retry-After asks if that is longer, up to
  [sync] max_retry_after_s; and this run stops: a PACS that is down would refuse every item the same way.
- the PACS refuses this unit's credentials (401, 403): as retry. The fault is the unit's settings,
  not the item, and quarantining the whole queue would leave the IT person requeueing every visit.
- any other refusal, or an eye that cannot be encoded (a damaged image, a bad mask): quarantined
  with the reason, and the run goes on, so one bad item never blocks the queue.
Every attempt is written to outbox_attempts. Resending is harmless: DICOM UIDs derive from the
visit's UUID, so a sync killed between "stored" and "marked sent" stores nothing twice next time.

Where [sync] fhir_url names an EHR, each run first queues the FHIR twin (FHIR_KIND) of every eye queued for
the PACS, then sends those after the PACS's items, under the same rules (`device.outbox.ehr`); each bundle is
a set of conditional creates, so a resend creates nothing twice. They are queued here rather than when a visit
is finished because the kiosk finishing it does not read [sync]: this way an EHR configured later gets the
eyes recorded before it, and a unit without one holds no items for nobody. An EHR that is down stops only
its own items. Then `run_sync` asks the PACS for the reading centre's verdicts (`device.outbox.verdicts`).

After each run, where configured: newer models from [models] release_url (`device.outbox.releases`), then the
unit's health report to [sync] health_url (`device.outbox.health`); neither holds up the sending.

The DICOM files come from `device.outbox.study`, encoded ahead in worker processes (`device.outbox.encoder`).
The sync service is another process than the kiosk and opens its own VisitLog; a lock file beside
the visit log keeps two syncs (the timer and a hand-run `glaucoscreen sync`) from sending at once.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from device.config import Config, SyncConfig
from device.outbox import fhir, health, releases
from device.outbox.dicomweb import REJECT, STORED, DicomWebClient, StoreResult
from device.outbox.ehr import EhrClient
from device.outbox.encoder import ahead, encoder
from device.outbox.programme import ProgrammeClient, ProgrammeError
from device.outbox.study import Unencodable
from device.outbox.verdicts import fetch_verdicts
from device.visits.datadir import DataDir
from device.visits.visitlog import FHIR_KIND, OUTBOX_KIND, VisitLog

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0
MAX_RETRY_AFTER_S = SyncConfig.max_retry_after_s  # the default cap on a PACS's Retry-After
UNIT_REFUSED = {401, 403}  # about this unit's credentials, not about the item
_BATCH = 100


class SyncConfigError(ValueError):
    """The sync settings cannot work (no PACS URL, a credentials file missing or empty); says which to fix."""


@dataclass
class SyncReport:
    """What one run did; `stopped` says why it ended before the queue did (None: nothing left that is due)."""

    attempted: int = 0
    sent: int = 0
    failed: int = 0
    quarantined: int = 0
    stopped: str | None = None
    elapsed_s: float = 0.0
    pending: int = 0
    quarantined_total: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


# --- Backoff ------------------------------------------------------------------------------------

def backoff_delay(failures: int, rng: random.Random) -> float:
    """Seconds to wait after an item's `failures`-th failure in a row: uniform over [0, min(1 h, 30 s * 2^(n-1))]
    (AWS's "full jitter"), so retries spread out instead of arriving together when a network comes back."""
    if failures < 1:
        raise ValueError(f"a backoff follows at least one failure, not {failures}")
    ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2.0 ** min(failures - 1, 32))
    return rng.uniform(0.0, ceiling)


def retry_delay(failures: int, retry_after: float | None, rng: random.Random,
                max_retry_after_s: float = MAX_RETRY_AFTER_S) -> float:
    """Seconds to wait after a failure: the backoff, or the server's Retry-After when it asks for longer, but never
    more than `max_retry_after_s` for the Retry-After: a PACS (or anything between) saying "inf" or "1e9" must
    not park an item until 2057, nor crash the run. Always a finite number of seconds."""
    delay = backoff_delay(failures, rng)
    if retry_after is not None and not math.isnan(retry_after):
        delay = max(delay, min(retry_after, max_retry_after_s))
    return delay


def _failures_in_a_row(visits: VisitLog, item_id: int) -> int:
    """Failed attempts since the item was last requeued or queued; a requeued item starts its backoff afresh."""
    streak = 0
    for attempt in reversed(visits.outbox_attempts(item_id)):
        if attempt["outcome"] != "failed":
            break
        streak += 1
    return streak


# --- One run ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _sync_lock(data_dir: Path) -> Iterator[bool]:
    """True when this process holds the unit's sync lock. The kernel drops it when the process dies, so a
    killed sync never leaves the queue locked."""
    with open(DataDir(data_dir).sync_lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _due_items(visits: VisitLog, now: dt.datetime, limit: int | None, kind: str = OUTBOX_KIND) -> Iterator[dict]:
    """Due items of one kind in creation order, batch by batch (items finalized meanwhile join the run), each once."""
    seen: set[int] = set()
    while limit is None or len(seen) < limit:
        batch = [i for i in visits.outbox_pending(_BATCH, now=now, kind=kind) if i["id"] not in seen]
        if not batch:
            return
        for item in batch:
            if limit is not None and len(seen) >= limit:
                return
            seen.add(item["id"])
            yield item


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def sync_once(visits: VisitLog, client: DicomWebClient, *, device_id: str, limit: int | None = None,
              now: dt.datetime | None = None, rng: random.Random | None = None,
              stop: threading.Event | None = None, max_retry_after_s: float = MAX_RETRY_AFTER_S,
              ehr: EhrClient | None = None) -> SyncReport:
    """Send the outbox items that are due at `now` (default: the clock), oldest first, at most `limit`;
    `stop` (set on SIGTERM) ends the run after the item in flight. A server's Retry-After holds an item back
    at most `max_retry_after_s`. With `ehr`, each eye's FHIR bundle is queued and sent there too, after the
    PACS's items, under the same rules; an EHR that is down stops its own items only."""
    started = time.monotonic()
    rng = rng or random.Random()
    report = SyncReport()
    with _sync_lock(visits.data_dir) as held:
        if not held:
            report.stopped = "another sync is running on this unit"
        else:
            _send_due(visits, client, device_id, _due_items(visits, now or _utc_now(), limit), now, rng, stop, report,
                      max_retry_after_s)
            if ehr is not None and not (stop is not None and stop.is_set()):
                visits.queue_fhir()
                _send_fhir_due(visits, ehr, device_id, _due_items(visits, now or _utc_now(), limit, FHIR_KIND), now,
                               rng, stop, report, max_retry_after_s)
    counts = visits.outbox_counts()
    report.pending, report.quarantined_total = counts["pending"], counts["quarantined"]
    report.elapsed_s = round(time.monotonic() - started, 3)
    return report


def _send_due(visits: VisitLog, client: DicomWebClient, device_id: str, items: Iterator[dict],
              now: dt.datetime | None, rng: random.Random, stop: threading.Event | None, report: SyncReport,
              max_retry_after_s: float) -> None:
    with encoder(visits, device_id) as submit:
        for item, encoding in ahead(items, submit, window=4):
            if stop is not None and stop.is_set():
                report.stopped = "asked to stop"
                return
            where = f"visit {item['visit_uuid']} {item['eye']} eye (outbox item {item['id']})"
            files = encoding.result()
            report.attempted += 1
            if isinstance(files, Unencodable):
                reason = f"this eye cannot be encoded as DICOM: {files.reason}"
                visits.outbox_mark_failed(item["id"], reason, quarantine=True)
                report.quarantined += 1
                log.error("quarantined %s: %s", where, reason)
                continue
            result = client.store_files(files)
            stop_reason = _record(visits, item, result, now, rng, report, where, max_retry_after_s)
            if stop_reason is not None:
                report.stopped = stop_reason
                return


def _send_fhir_due(visits: VisitLog, ehr: EhrClient, device_id: str, items: Iterator[dict], now: dt.datetime | None,
                   rng: random.Random, stop: threading.Event | None, report: SyncReport, max_retry_after_s: float) -> None:
    """The FHIR items, as `_send_due` sends the DICOM ones (a bundle is built in a few milliseconds, in process)."""
    for item in items:
        if stop is not None and stop.is_set():
            report.stopped = "asked to stop"
            return
        where = f"visit {item['visit_uuid']} {item['eye']} eye's FHIR bundle (outbox item {item['id']})"
        report.attempted += 1
        try:
            bundle = fhir.encode_item(visits, item["id"], device_id)
        except (ValueError, LookupError) as exc:
            reason = f"this eye cannot be written as a FHIR bundle: {exc}"
            visits.outbox_mark_failed(item["id"], reason, quarantine=True)
            report.quarantined += 1
            log.error("quarantined %s: %s", where, reason)
            continue
        stop_reason = _record(visits, item, ehr.send(bundle), now, rng, report, where, max_retry_after_s, to=EHR)
        if stop_reason is not None:
            report.stopped = "; ".join(filter(None, [report.stopped, stop_reason]))
            return


PACS, EHR = "the PACS", "the EHR"


def _record(visits: VisitLog, item: dict, result: StoreResult, now: dt.datetime | None, rng: random.Random,
            report: SyncReport, where: str, max_retry_after_s: float, to: str = PACS) -> str | None:
    """Write the outcome to the outbox; return why the run must stop, if it must."""
    if result.outcome == STORED:
        response = f"HTTP {result.status}: " + (result.reason if to == EHR else f"{len(result.stored)} instances stored")
        if result.warnings:
            response += "; " + "; ".join(result.warnings)
        visits.outbox_mark_sent(item["id"], response=response)
        report.sent += 1
        log.info("sent %s: %s", where, response)
        return None
    if result.outcome == REJECT and result.status not in UNIT_REFUSED:
        visits.outbox_mark_failed(item["id"], result.reason, quarantine=True)
        report.quarantined += 1
        log.error("quarantined %s: %s refused it: %s", where, to, result.reason)
        return None
    failures = _failures_in_a_row(visits, item["id"]) + 1
    delay = retry_delay(failures, result.retry_after, rng, max_retry_after_s)
    next_attempt = (now or _utc_now()) + dt.timedelta(seconds=delay)
    visits.outbox_mark_failed(item["id"], result.reason, next_attempt_at=next_attempt)
    report.failed += 1
    log.warning("could not send %s (failure %d in a row), next try in %.0f s: %s", where, failures, delay, result.reason)
    return f"{to} is not taking visits now: {result.reason}"


# --- Settings -> client --------------------------------------------------------------------------

def _secret(path: str, setting: str) -> str:
    """A credential from the file a setting names; the message names the setting, never the secret."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SyncConfigError(f"[sync] {setting} = {str(file)!r}: no such file") from None
    except PermissionError:
        raise SyncConfigError(f"[sync] {setting} = {str(file)!r}: this user ({_user()}) may not read it; "
                              "make it readable by the glaucoscreen user only (chmod 640, group glaucoscreen)") from None
    except (IsADirectoryError, UnicodeDecodeError) as exc:
        raise SyncConfigError(f"[sync] {setting} = {str(file)!r} is not a text file: {exc}") from None
    if not text:
        raise SyncConfigError(f"[sync] {setting} = {str(file)!r} is empty")
    if file.stat().st_mode & 0o004:
        log.warning("[sync] %s %s is readable by every user on the unit; chmod o-r it", setting, file)
    return text


def _user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def ehr_client_from_config(cfg: SyncConfig) -> EhrClient | None:
    """The EHR client [sync] fhir_url describes (with fhir_token_file, and ca_file and the timeouts shared with the
    PACS), or None where no EHR is configured."""
    url = cfg.fhir_url.strip()
    if not url:
        return None
    token = _secret(cfg.fhir_token_file, "fhir_token_file") if cfg.fhir_token_file else None
    ca_file = str(Path(cfg.ca_file).expanduser()) if cfg.ca_file else None
    try:
        return EhrClient(url, token=token, ca_file=ca_file, timeout=_positive_seconds(cfg, "timeout_s"),
                         deadline=_positive_seconds(cfg, "deadline_s"))
    except ValueError as exc:
        raise SyncConfigError(f"[sync] fhir_url: {exc}") from None


def client_from_config(cfg: SyncConfig, target: str | None = None) -> DicomWebClient:
    """The DICOMweb client the settings describe. `target` is a DICOMweb URL that replaces [sync] url for this
    run (the same credentials go with it). Credentials come only from the files the settings name."""
    url = (target or cfg.url or "").strip()
    if not url:
        raise SyncConfigError("no PACS to send to: set url in the [sync] section of the unit's configuration "
                              "(e.g. url = \"https://pacs.example.org/dicom-web\") or give a target URL")
    token = _secret(cfg.token_file, "token_file") if cfg.token_file else None
    username = password = None
    if cfg.username or cfg.password_file:
        if not (cfg.username and cfg.password_file):
            raise SyncConfigError("[sync] username and password_file go together: set both, or neither")
        username, password = cfg.username, _secret(cfg.password_file, "password_file")
    ca_file = None
    if cfg.ca_file:
        ca_file = str(Path(cfg.ca_file).expanduser())
        if not Path(ca_file).is_file():
            raise SyncConfigError(f"[sync] ca_file = {cfg.ca_file!r}: no such file")
    for setting in ("timeout_s", "deadline_s"):
        _positive_seconds(cfg, setting)
    try:
        return DicomWebClient(url, token=token, username=username, password=password, ca_file=ca_file,
                              timeout=cfg.timeout_s, deadline=cfg.deadline_s)
    except ValueError as exc:
        raise SyncConfigError(f"[sync]: {exc}") from None


def programme_client_from_config(cfg: SyncConfig, pacs_url: str) -> ProgrammeClient:
    """The client for the programme's release index and health endpoint: this section's CA file and timeout, and
    the PACS's credentials for addresses on the PACS's own server only (device.outbox.programme)."""
    token = _secret(cfg.token_file, "token_file") if cfg.token_file else None
    auth = (cfg.username, _secret(cfg.password_file, "password_file")) if cfg.username and cfg.password_file else None
    ca_file = str(Path(cfg.ca_file).expanduser()) if cfg.ca_file else None
    return ProgrammeClient(pacs_url=pacs_url, token=token, auth=auth, ca_file=ca_file, timeout=cfg.timeout_s)


def programme_run(config: Config, programme: ProgrammeClient, visits: VisitLog | None) -> dict:
    """After each sync run: newer models from [models] release_url, then the health report (which names the models
    now active) to [sync] health_url. Neither stops the sending: each outcome is logged and returned."""
    out: dict = {}
    if config.models.release_url:
        out["models"] = releases.check(config, programme)
    if config.sync.health_url:
        try:
            programme.post_json(config.sync.health_url, health.report(config, visits))
            out["health"] = "sent"
        except ProgrammeError as exc:
            log.warning("health report not sent to %s: %s", config.sync.health_url, exc)
            out["health"] = f"not sent: {exc}"
    return out


def _positive_seconds(cfg: SyncConfig, setting: str) -> float:
    value = getattr(cfg, setting)
    if not (value > 0 and math.isfinite(value)):
        raise SyncConfigError(f"[sync] {setting} must be a positive number of seconds, not {value}")
    return value


# --- The service --------------------------------------------------------------------------------

class _JournalFormatter(logging.Formatter):
    """journald reads a leading <N> as the line's priority (and adds the time itself); a terminal gets plain lines."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal: bool):
        super().__init__("%(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{self.PRIORITY.get(record.levelno, 6)}>{text}" if self.journal else text


def _log_to_stdout() -> None:
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_JournalFormatter(journal="JOURNAL_STREAM" in os.environ))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (systemctl stop) and SIGINT end the service after the item in flight, never mid-write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        log.info("%s: stopping after the item in flight", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_sync(config: Config, *, once: bool, target: str | None = None) -> dict:
    """The sync service: send what is due now and, unless `once`, again every [sync] interval_s until SIGTERM.

    Returns the totals over its runs, the last run's report and the outbox's counts afterwards. A PACS that
    cannot be reached is normal for a rural unit and not an error; settings that cannot work raise
    SyncConfigError before anything is sent.
    """
    _log_to_stdout()
    max_retry_after_s = _positive_seconds(config.sync, "max_retry_after_s")
    client = client_from_config(config.sync, target)
    ehr = ehr_client_from_config(config.sync)
    verdicts_received = 0
    programme = (programme_client_from_config(config.sync, client.url)
                 if config.models.release_url or config.sync.health_url else None)
    stop = threading.Event()
    totals = {"runs": 0, "attempted": 0, "sent": 0, "failed": 0, "quarantined": 0}
    last: SyncReport | None = None
    try:
        if not DataDir(config.data_dir).visits_db.exists():
            log.info("no visit log at %s yet: nothing to send", config.data_dir)
            extras = programme_run(config, programme, None) if programme is not None else {}
            return {**totals, "last": None, "outbox": {"pending": 0, "sent": 0, "quarantined": 0}, **extras}
        with VisitLog(config.data_dir) as visits, _stop_on_signals(stop):
            while True:
                # a visit nobody will finish goes with what it has, rather than waiting for ever
                visits.close_abandoned(dt.timedelta(hours=config.abandon_visit_after_h))
                last = sync_once(visits, client, device_id=config.device_id, stop=stop,
                                 max_retry_after_s=max_retry_after_s, ehr=ehr)
                totals["runs"] += 1
                for key in ("attempted", "sent", "failed", "quarantined"):
                    totals[key] += getattr(last, key)
                log.info("sync to %s: %d sent, %d to retry, %d quarantined in %.1f s; %d pending, %d quarantined%s",
                         client.url, last.sent, last.failed, last.quarantined, last.elapsed_s, last.pending,
                         last.quarantined_total, f" (stopped: {last.stopped})" if last.stopped else "")
                if not stop.is_set():  # the reading centre's word on what was sent (device.outbox.verdicts)
                    verdicts_received += fetch_verdicts(visits, client).received
                extras = programme_run(config, programme, visits) if programme is not None else {}
                if once or stop.wait(config.sync.interval_s):
                    break
            outbox = visits.outbox_counts()
    finally:
        client.close()
        if ehr is not None:
            ehr.close()
        if programme is not None:
            programme.close()
    return {**totals, "last": last.to_dict(), "outbox": outbox, "verdicts_received": verdicts_received, **extras}
