"""The visit log's side of the reading centre's loop: a verdict kept once, which eyes sync asks about and in what
order, which verdicts still call a patient back; and the FHIR twins of the outbox queued once."""
from __future__ import annotations

import datetime as dt
import random

import pytest

from device.lab.sync_trials import add_visits, sample_eyes
from device.visits import migrations
from device.visits.visitlog import FHIR_KIND, OUTBOX_KIND, VisitLog


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime(2025, 6, 1, 8, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def log(tmp_path, clock):
    with VisitLog(tmp_path / "unit", clock=clock) as visits:
        yield visits


def test_the_schema_has_the_verdicts(log):
    assert log.schema_version == len(migrations.MIGRATIONS)
    tables = {row[0] for row in log.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()}
    assert {"verdicts", "verdict_checks"} <= tables


def test_a_verdict_is_kept_once_and_the_latest_counts(log, eyes, clock):
    visit = add_visits(log, eyes, 1, random.Random(1))[0]
    when = clock.t + dt.timedelta(days=1)
    assert log.add_verdict(visit, "right", "2.25.1", verdict="retake", note="blurred", grader="dr-o", graded_at=when)
    assert not log.add_verdict(visit, "right", "2.25.1", verdict="retake", note="blurred", grader="dr-o", graded_at=when)
    assert log.add_verdict(visit, "right", "2.25.2", verdict="routine", note="", grader="dr-o",
                           graded_at=when + dt.timedelta(hours=1))
    assert log.latest_verdicts(visit)["right"]["verdict"] == "routine"
    assert log.get_visit(visit)["eyes"]["right"]["verdict"]["sop_instance_uid"] == "2.25.2"
    assert [v["sop_instance_uid"] for v in log.get_visit(visit)["eyes"]["right"]["verdicts_before"]] == ["2.25.1"]
    assert log.get_visit(visit)["eyes"]["left"]["verdict"] is None
    with pytest.raises(ValueError, match="a verdict is one of"):
        log.add_verdict(visit, "left", "2.25.3", verdict="maybe", note="", grader="dr-o", graded_at=when)


def test_sync_asks_about_sent_eyes_those_asked_longest_ago_first_a_graded_one_too(log, eyes, clock):
    first, second = add_visits(log, eyes, 2, random.Random(2))
    assert log.eyes_to_ask_for_verdicts(sent_since=clock.t - dt.timedelta(days=1)) == []  # nothing sent yet
    for item in log.outbox_items():
        log.outbox_mark_sent(item["id"])
    waiting = log.eyes_to_ask_for_verdicts(sent_since=clock.t - dt.timedelta(days=1))
    assert [(w["visit_uuid"], w["eye"]) for w in waiting] == [(first, "right"), (first, "left"), (second, "right"),
                                                              (second, "left")]
    clock.t += dt.timedelta(minutes=5)
    log.verdict_checked(first, "right")
    assert [(w["visit_uuid"], w["eye"]) for w in log.eyes_to_ask_for_verdicts(
        sent_since=clock.t - dt.timedelta(days=1), limit=2)] == [(first, "left"), (second, "right")]
    log.add_verdict(second, "left", "2.25.9", verdict="refer", note="", grader="g", graded_at=clock.t)
    clock.t += dt.timedelta(minutes=5)
    for visit, eye in ((first, "left"), (second, "right"), (second, "left")):
        log.verdict_checked(visit, eye)
    # an eye with a verdict is still asked about, in its turn: the grader may correct it
    assert [(w["visit_uuid"], w["eye"]) for w in log.eyes_to_ask_for_verdicts(
        sent_since=clock.t - dt.timedelta(days=1))] == [(first, "right"), (first, "left"), (second, "right"),
                                                         (second, "left")]
    assert log.eyes_to_ask_for_verdicts(sent_since=clock.t + dt.timedelta(days=1)) == []  # sent too long ago


def test_a_retake_calls_the_patient_back_until_a_later_visit(log, eyes, clock):
    visit = add_visits(log, eyes, 1, random.Random(3))[0]
    patient = log.get_visit(visit)["patient"]["identifier"]
    log.add_verdict(visit, "left", "2.25.5", verdict="retake", note="", grader="g", graded_at=clock.t)
    assert [v["visit_uuid"] for v in log.verdicts_calling_back()] == [visit]
    clock.t += dt.timedelta(days=3)
    again = log.start_visit(patient)
    assert log.verdicts_calling_back() != []  # an unfinished visit has not taken the photo yet
    log.close_visit(again, "patient left")
    assert log.verdicts_calling_back() == []


def test_the_fhir_twins_are_queued_once(log, eyes):
    add_visits(log, eyes, 2, random.Random(4))
    assert log.queue_fhir() == 4
    assert log.queue_fhir() == 0
    kinds = [i["kind"] for i in log.outbox_items()]
    assert kinds.count(OUTBOX_KIND) == kinds.count(FHIR_KIND) == 4
    assert {i["kind"] for i in log.outbox_pending(kind=FHIR_KIND)} == {FHIR_KIND}
