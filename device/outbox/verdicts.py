"""The reading centre's verdict on one eye, as the DICOM SR that carries it, and its way back to the unit.

A grader at the reading centre looks at an eye's study in the PACS (`device.reading_centre`) and records a
verdict (urgent referral, referral, routine, or ungradable: take the photo again) with a note. It is stored in
the same study as a Comprehensive SR of its own series: a root container "Reading centre verdict" holding the
verdict as a coded item, the note as text and the grader as the person observer, with the eye's photo and the
unit's report as its evidence. The codes are `device.outbox.codes`'.

The unit's sync asks the PACS (QIDO-RS, by study UID) for the SR instances of each study it sent, fetches those
it has not seen (WADO-RS), and keeps each verdict once in the visit log, keyed by the SR's SOP Instance UID: a
run killed half-way, or asked again, records nothing twice. A grader corrects a verdict by writing another SR
in the study; the unit keeps both, and the later one (by its content date and time) is the one that counts. So
a study is asked about for VERDICT_WAIT_DAYS after it was sent, verdict or not, and each run asks about at most
ASKED_PER_RUN studies, those never asked first, then those asked about longest ago: a busy unit's questions
stay bounded, and every study is still asked about in turn.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from pydicom import Dataset

from device.outbox.codes import GRADER_NOTE, LOCAL_DESIGNATOR, VERDICT, VERDICT_REPORT, VERDICT_VALUES
from device.outbox.dicom import study_uids
from device.outbox.dicomweb import DicomWebClient, DicomWebError
from device.visits.visitlog import VisitLog

log = logging.getLogger(__name__)

VERDICT_WAIT_DAYS = 90
ASKED_PER_RUN = 50  # studies asked about per sync run, those asked longest ago first
SERIES_DESCRIPTION = "Reading centre verdict"
MAX_NOTE = 1000  # characters: a TEXT item a PACS shows whole
PERSON_OBSERVER_NAME = ("121008", "DCM")


@dataclass(frozen=True)
class Verdict:
    """One grader's verdict on one eye's study, as read back from its SR."""

    study_uid: str
    sop_uid: str
    verdict: str  # a key of codes.VERDICT_VALUES: urgent | refer | routine | retake
    note: str
    grader: str
    graded_at: dt.datetime  # UTC


# --- The SR --------------------------------------------------------------------------------------

def build_verdict_sr(evidence: list[Dataset], *, verdict: str, note: str, grader: str, when: dt.datetime,
                     manufacturer: str = "GlaucoScreen Edge reading centre") -> Dataset:
    """The verdict as an SR in the study of `evidence` (the eye's instances, headers suffice), signed by `grader`."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem
    from pydicom.sr.codedict import codes

    if verdict not in VERDICT_VALUES:
        raise ValueError(f"a verdict is one of {', '.join(VERDICT_VALUES)}, not {verdict!r}")
    note = " ".join((note or "").split())
    if len(note) > MAX_NOTE:
        raise ValueError(f"the note is at most {MAX_NOTE} characters")
    if not (grader or "").strip():
        raise ValueError("a verdict names its grader")
    if not evidence:
        raise ValueError("a verdict needs the study's instances it refers to")
    when = when.astimezone(dt.timezone.utc)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=f"{grader.strip()[:60]}^"))
    items = [*observer, hd.sr.CodeContentItem(VERDICT.dicom(), VERDICT_VALUES[verdict].dicom(),
                                              relationship_type="CONTAINS")]
    if note:
        items.append(hd.sr.TextContentItem(GRADER_NOTE.dicom(), note, relationship_type="CONTAINS"))
    root = hd.sr.ContainerContentItem(VERDICT_REPORT.dicom())
    root.ContentSequence = hd.sr.ContentSequence(items)
    local = CodingSchemeIdentificationItem(designator=LOCAL_DESIGNATOR, name="GlaucoScreen Edge local codes",
                                           responsible_organization="GlaucoScreen Edge")
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=hd.UID(), series_number=90, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=manufacturer, is_complete=True, is_final=True,
        series_description=SERIES_DESCRIPTION, coding_schemes=[local],
        content_date=when.strftime("%Y%m%d"), content_time=when.strftime("%H%M%S.%f"))
    sr.TimezoneOffsetFromUTC = "+0000"
    sr.SpecificCharacterSet = "ISO_IR 192"  # a note in the grader's language
    return sr


def _code(item: Dataset, sequence: str) -> tuple[str, str] | None:
    codes = item.get(sequence)
    if not codes:
        return None
    value = codes[0].get("CodeValue") or codes[0].get("LongCodeValue") or codes[0].get("URNCodeValue") or ""
    return str(value), str(codes[0].get("CodingSchemeDesignator", ""))


def _is(item: Dataset, code) -> bool:
    return _code(item, "ConceptNameCodeSequence") == (code.code, LOCAL_DESIGNATOR)


def read_verdict(ds: Dataset) -> Verdict | None:
    """The verdict an SR carries, or None when it is another SR (the unit's own report, someone else's)."""
    if ds.get("Modality") != "SR" or not _is(ds, VERDICT_REPORT):
        return None
    by_code = {code.code: key for key, code in VERDICT_VALUES.items()}
    verdict, note, grader = None, "", ""
    for item in ds.get("ContentSequence", []):
        if _is(item, VERDICT):
            value = _code(item, "ConceptCodeSequence")
            verdict = by_code.get(value[0]) if value and value[1] == LOCAL_DESIGNATOR else None
        elif _is(item, GRADER_NOTE):
            note = str(item.get("TextValue", ""))
        elif _code(item, "ConceptNameCodeSequence") == PERSON_OBSERVER_NAME:
            grader = str(item.get("PersonName", "")).rstrip("^").replace("^", " ")
    if verdict is None:
        return None
    try:
        # the fraction of a second too: a grader who corrects a verdict within the second must still be the latest
        seconds, _, fraction = str(ds.ContentTime).partition(".")
        when = dt.datetime.strptime(f"{ds.ContentDate}{seconds:0<6}", "%Y%m%d%H%M%S")
        if fraction:
            when = when.replace(microsecond=int(f"{fraction:0<6}"[:6]))
    except (AttributeError, ValueError):
        log.warning("verdict %s has no readable content date and time: not kept", ds.get("SOPInstanceUID"))
        return None
    return Verdict(study_uid=str(ds.StudyInstanceUID), sop_uid=str(ds.SOPInstanceUID), verdict=verdict, note=note,
                   grader=grader or "the reading centre", graded_at=when.replace(tzinfo=dt.timezone.utc))


# --- Back at the unit ------------------------------------------------------------------------------

@dataclass
class VerdictReport:
    """What one fetch did; `stopped` says why it ended early (the PACS not answering)."""

    studies_asked: int = 0
    received: int = 0
    stopped: str | None = None
    received_for: list[str] = field(default_factory=list)  # visit UUIDs


def fetch_verdicts(visits: VisitLog, client: DicomWebClient, *, now: dt.datetime | None = None) -> VerdictReport:
    """Ask the PACS for the verdicts on this unit's studies (new ones and corrections), and keep each new one once."""
    now = now or dt.datetime.now(dt.timezone.utc)
    report = VerdictReport()
    for eye in visits.eyes_to_ask_for_verdicts(sent_since=now - dt.timedelta(days=VERDICT_WAIT_DAYS), limit=ASKED_PER_RUN):
        uids = study_uids(eye["visit_uuid"], eye["eye"])
        try:
            report.studies_asked += 1
            answers = client.instances(uids["study"], modality="SR")
            visits.verdict_checked(eye["visit_uuid"], eye["eye"])
            for instance in answers:
                sop = str(instance.get("SOPInstanceUID", ""))
                if not sop or sop == uids["sr"] or visits.has_verdict(sop):
                    continue
                found = read_verdict(client.retrieve(uids["study"], str(instance.SeriesInstanceUID), sop))
                if found is not None and visits.add_verdict(eye["visit_uuid"], eye["eye"], found.sop_uid,
                                                            verdict=found.verdict, note=found.note,
                                                            grader=found.grader, graded_at=found.graded_at):
                    report.received += 1
                    report.received_for.append(eye["visit_uuid"])
                    log.info("verdict for visit %s %s eye: %s", eye["visit_uuid"], eye["eye"], found.verdict)
        except DicomWebError as exc:
            report.stopped = f"the PACS did not answer about verdicts: {exc}"
            log.warning("%s", report.stopped)
            break
    return report
