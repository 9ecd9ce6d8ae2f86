"""Sync when things go wrong, against a real Orthanc and a proxy that misbehaves on cue: nothing is lost,
nothing is stored twice, a PACS that is down is not hammered, and one bad item never blocks the queue."""
from __future__ import annotations

import datetime as dt
import random
import statistics

import pytest

from device.lab.sync_trials import Trials, add_visits, sample_eyes
from device.outbox.dicomweb import DicomWebClient
from device.outbox.sync import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_delay, sync_once
from device.visits.visitlog import VisitLog

pytest_plugins = ["tests.orthanc"]

T0 = dt.datetime(2025, 6, 2, 8, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 4)


@pytest.fixture
def unit(tmp_path, eyes):
    """A unit with three finished visits: six eyes queued."""
    with VisitLog(tmp_path / "unit") as log:
        add_visits(log, eyes, 3, random.Random(11))
        yield log


@pytest.fixture
def direct(orthanc):
    c = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    yield c
    c.close()


@pytest.fixture
def proxied(orthanc, fault_proxy):
    c = DicomWebClient(fault_proxy.url_for(orthanc.url), username=orthanc.username, password=orthanc.password, timeout=1)
    yield c
    c.close()


def _due_in(item: dict, now: dt.datetime) -> float:
    return (dt.datetime.fromisoformat(item["next_attempt_at"]) - now).total_seconds()


@pytest.mark.orthanc
def test_pacs_down_loses_nothing_and_is_not_hammered(orthanc, direct, unit):
    orthanc.stop()
    report = sync_once(unit, direct, device_id="GSE-TEST", now=T0, rng=random.Random(1))
    assert (report.attempted, report.sent, report.failed) == (1, 0, 1)  # one try, then the run stops
    assert "cannot reach the PACS" in report.stopped
    first, *others = unit.outbox_items()
    assert first["status"] == "pending" and 0 <= _due_in(first, T0) <= BACKOFF_BASE_S
    assert all(i["status"] == "pending" and i["attempts"] == 0 and i["next_attempt_at"] is None for i in others)
    # Ten minutes on the first item waits out its backoff; the run tries the next item, and stops again.
    report = sync_once(unit, direct, device_id="GSE-TEST", now=T0 + dt.timedelta(minutes=10), rng=random.Random(2))
    assert report.attempted == 1 and unit.outbox_counts() == {"pending": 6, "sent": 0, "quarantined": 0}
    orthanc.start()
    report = sync_once(unit, direct, device_id="GSE-TEST", now=T0 + dt.timedelta(hours=2))
    assert report.sent == 6 and report.stopped is None
    assert len(orthanc.studies()) == 6 and orthanc.instances_count() == 18
    assert [a["outcome"] for a in unit.outbox_attempts(first["id"])] == ["failed", "failed", "sent"]


@pytest.mark.orthanc
@pytest.mark.parametrize("fault, words", [("500", "HTTP 500"), ("503", "unavailable"), ("hang", "did not answer within 1 s"),
                                          ("drop", "cannot reach")])
def test_a_server_fault_is_retried_later(orthanc, fault_proxy, proxied, unit, fault, words):
    fault_proxy.fail_next(1, fault)
    report = sync_once(unit, proxied, device_id="GSE-TEST", now=T0, rng=random.Random(3))
    assert (report.sent, report.failed, report.quarantined) == (0, 1, 0) and words in report.stopped
    first = unit.outbox_items()[0]
    assert first["status"] == "pending" and words in first["last_error"] and _due_in(first, T0) <= BACKOFF_BASE_S
    assert orthanc.instances_count() == 0
    report = sync_once(unit, proxied, device_id="GSE-TEST", now=T0 + dt.timedelta(hours=1))
    assert report.sent == 6 and orthanc.instances_count() == 18


@pytest.mark.orthanc
@pytest.mark.parametrize("status, words", [("400", "could not read the request"), ("413", "too large")])
def test_a_refused_item_is_quarantined_and_the_queue_goes_on(orthanc, fault_proxy, proxied, unit, status, words):
    fault_proxy.fail_next(1, status)
    report = sync_once(unit, proxied, device_id="GSE-TEST", now=T0)
    assert (report.sent, report.quarantined, report.stopped) == (5, 1, None)
    first = unit.outbox_items()[0]
    assert first["status"] == "quarantined" and words in first["last_error"]
    assert len(orthanc.studies()) == 5
    # The worker fixes the cause and presses "retry": the item goes out on the next run.
    unit.outbox_requeue(first["id"])
    assert sync_once(unit, proxied, device_id="GSE-TEST", now=T0).sent == 1
    assert [a["outcome"] for a in unit.outbox_attempts(first["id"])] == ["quarantined", "sent"]
    assert len(orthanc.studies()) == 6 and orthanc.instances_count() == 18


@pytest.mark.orthanc
def test_refused_credentials_wait_instead_of_quarantining_the_queue(orthanc, fault_proxy, proxied, unit):
    fault_proxy.fail_next(1, "401")
    report = sync_once(unit, proxied, device_id="GSE-TEST", now=T0)
    assert (report.attempted, report.failed, report.quarantined) == (1, 1, 0)
    assert "refused the credentials" in report.stopped
    assert unit.outbox_counts() == {"pending": 6, "sent": 0, "quarantined": 0}
    assert sync_once(unit, proxied, device_id="GSE-TEST", now=T0 + dt.timedelta(hours=1)).sent == 6


@pytest.mark.orthanc
def test_an_eye_whose_photo_is_damaged_is_quarantined_and_the_rest_is_sent(orthanc, direct, unit):
    first = unit.outbox_items()[0]
    sha = unit.outbox_eye(first["id"])["capture"]["photo_sha256"]
    photo = unit.images.path(sha)
    photo.write_bytes(photo.read_bytes()[:-100] + b"\0" * 100)  # the SD card flipped the end of the file
    # The store is content-addressed: every eye whose photo had these bytes is damaged with it.
    damaged = [i["id"] for i in unit.outbox_items() if unit.outbox_eye(i["id"])["capture"]["photo_sha256"] == sha]
    report = sync_once(unit, direct, device_id="GSE-TEST")
    assert (report.sent, report.quarantined) == (6 - len(damaged), len(damaged))
    quarantined = unit.outbox_items("quarantined")
    assert [i["id"] for i in quarantined] == damaged
    assert all("cannot be encoded" in i["last_error"] and "damaged on disk" in i["last_error"] for i in quarantined)
    assert len(orthanc.studies()) == 6 - len(damaged)


@pytest.mark.orthanc
def test_backoff_grows_with_each_failure_in_a_row_and_restarts_after_a_requeue(orthanc, direct, unit):
    orthanc.stop()
    now = T0
    for failures in range(1, 9):
        now += dt.timedelta(hours=2)  # every earlier backoff is over
        sync_once(unit, direct, device_id="GSE-TEST", now=now, rng=random.Random(failures), limit=1)
        first = unit.outbox_items()[0]
        assert first["attempts"] == failures
        assert 0 <= _due_in(first, now) <= min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (failures - 1))
    # Quarantined, then requeued once its cause was fixed: its next failure waits 30 s at most again.
    unit.outbox_mark_failed(first["id"], "the PACS refused it", quarantine=True)
    unit.outbox_requeue(first["id"])
    sync_once(unit, direct, device_id="GSE-TEST", now=now, rng=random.Random(99), limit=1)
    first = unit.outbox_items()[0]
    assert first["attempts"] == 10 and 0 <= _due_in(first, now) <= BACKOFF_BASE_S
    orthanc.start()


def test_backoff_is_full_jitter_doubling_from_30_s_to_an_hour():
    rng = random.Random(7)
    for failures, ceiling in ((1, 30), (2, 60), (3, 120), (7, 1920), (8, 3600), (30, 3600)):
        draws = [backoff_delay(failures, rng) for _ in range(4000)]
        assert 0 <= min(draws) < 0.02 * ceiling and 0.98 * ceiling < max(draws) <= ceiling
        assert statistics.fmean(draws) == pytest.approx(ceiling / 2, rel=0.05)
    with pytest.raises(ValueError, match="at least one failure"):
        backoff_delay(0, rng)


@pytest.mark.orthanc
@pytest.mark.slow
def test_sync_killed_at_random_and_faults_lose_and_duplicate_nothing(orthanc, fault_proxy, tmp_path, eyes):
    """~20 randomized trials (the full 200 run as `glaucoscreen trials sync --trials 200`)."""
    trials = Trials(orthanc, fault_proxy, tmp_path, eyes, random.Random(20250602))
    try:
        verdict = trials.run(20)
    finally:
        trials.close()
    assert verdict["trials"] == 20
    assert [verdict[k] for k in ("lost", "torn", "duplicated", "leftovers")] == [0, 0, 0, 0], verdict
    assert verdict["eyes_sent"] == verdict["eyes_created"] == 2 * verdict["visits_created"] >= 8
    assert verdict["instances_in_pacs"] == 3 * verdict["eyes_created"]
    assert verdict["stats"]["kills_mid_run"] >= 5, verdict  # the kills did land inside runs
    assert verdict["stats"]["processes_left_behind"] == 0, verdict  # no encoding worker outlived its sync
