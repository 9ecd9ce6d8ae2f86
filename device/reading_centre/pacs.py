"""The PACS as the grader sees it: the worklist of screened eyes, one eye's study with the unit's result, the
photo with the unit's outlines drawn from its Segmentation, and the verdict stored back as an SR in the study.

Everything comes from the PACS over DICOMweb (`device.outbox.dicomweb`): one QIDO-RS question lists every SR
(the unit's report of each eye, and the verdicts given), and the reports themselves are fetched by WADO-RS once
each and kept in memory: an instance never changes under its UID.
"""
from __future__ import annotations

import datetime as dt
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom import Dataset
from pydicom.encaps import generate_frames

from device.outbox import codes
from device.outbox.dicom import PROGRESSION, PROGRESSION_CHANGE, PROGRESSION_TREND, REGISTRATION_QUALITY
from device.outbox.dicomweb import DicomWebClient, StoreResult
from device.outbox.verdicts import SERIES_DESCRIPTION, Verdict, build_verdict_sr, read_verdict
from models.runtime.images import decode_rgb, encode_jpeg

UNIT_REPORT = "Screening result"  # the unit's SR series description starts so (device.outbox.dicom)
REFERRAL_ORDER = {"refer": 0, "rescreen": 1, "normal": 2}
PROBABILITY = ("122157", "DCM")
VCDR = (codes.VCDR.code, "DCM")
REFERRAL_REASON = ("referral-reason", codes.LOCAL_DESIGNATOR)
# the comparison with the eye's first visit, as the unit wrote it (device.outbox.dicom): the verdict with its figures,
# how well the photos lined up, each measure's change against its noise, the trend
_CHANGE_ITEMS = {(c.value, c.scheme_designator): name for c, name in (
    (PROGRESSION, "summary"), (REGISTRATION_QUALITY, "registration"), (PROGRESSION_CHANGE, "changes"),
    (PROGRESSION_TREND, "trend"))}
_LISTED = ["SeriesDescription", "StudyDate", "StudyTime", "StudyDescription", "PatientName", "PatientID",
           "ContentDate", "ContentTime"]
_KEPT = 2000  # reports and verdicts kept in memory (tens of kB each): a worklist's worth
_SIDE = re.compile(r"\b(right|left) eye\b")  # in the unit's study description: "Glaucoma screening, right eye"


@dataclass
class Eye:
    """One screened eye as the worklist and the review page show it."""

    study_uid: str
    patient_id: str
    patient_name: str
    description: str
    study_date: str
    report_uid: str = ""
    referral: str | None = None  # the unit's: refer | rescreen | normal
    probability: float | None = None
    vcdr: float | None = None
    reasons: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    # the unit's comparison with the eye's first visit, in its words: summary, registration, trend (one each) and
    # changes (one a measure); empty where the eye was not compared
    progression: dict[str, list[str]] = field(default_factory=dict)

    @property
    def side(self) -> str | None:
        """"right" or "left", from the unit's study description (which is English, so the page names the eye in
        the grader's words); None for a description the unit did not write."""
        found = _SIDE.search(self.description)
        return found.group(1) if found else None

    @property
    def study_day(self) -> dt.date | None:
        """The study's date (DICOM's YYYYMMDD), or None when the PACS holds none or a malformed one."""
        try:
            return dt.datetime.strptime(self.study_date[:8], "%Y%m%d").date()
        except ValueError:
            return None

    @property
    def verdict(self) -> Verdict | None:
        """The latest verdict: a grader may correct an earlier one."""
        return max(self.verdicts, key=lambda v: (v.graded_at, v.sop_uid)) if self.verdicts else None


def _text(value) -> str:
    return str(value or "").replace("^", " ").strip()


def _walk(items):
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _concept(item: Dataset) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    return (str(seq[0].CodeValue), str(seq[0].CodingSchemeDesignator)) if seq else None


def read_unit_report(eye: Eye, report: Dataset) -> None:
    """The unit's referral, glaucoma probability, vCDR and reasons, and its comparison with the eye's first visit,
    from its TID 1500 report."""
    referral_code = (codes.REFERRAL.code, codes.LOCAL_DESIGNATOR)
    for item in _walk(report.get("ContentSequence")):
        concept = _concept(item)
        if concept == referral_code and item.get("ConceptCodeSequence"):
            eye.referral = str(item.ConceptCodeSequence[0].CodeValue)
        elif concept in (PROBABILITY, VCDR) and item.get("MeasuredValueSequence"):
            value = float(item.MeasuredValueSequence[0].NumericValue)
            if concept == PROBABILITY:
                eye.probability = value
            else:
                eye.vcdr = value
        elif concept == REFERRAL_REASON:
            eye.reasons.append(str(item.get("TextValue", "")))
        elif concept in _CHANGE_ITEMS:
            eye.progression.setdefault(_CHANGE_ITEMS[concept], []).append(str(item.get("TextValue", "")))


class ReadingRoom:
    """The reading centre's view of one PACS."""

    def __init__(self, client: DicomWebClient):
        self.client = client
        self._kept: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _instance(self, study_uid: str, series_uid: str, sop_uid: str, *, keep: bool = True) -> Dataset:
        """The instance by WADO-RS; kept in memory unless `keep` is false (a photo: megabytes, seen once)."""
        with self._lock:
            if sop_uid in self._kept:
                self._kept.move_to_end(sop_uid)
                return self._kept[sop_uid]
        ds = self.client.retrieve(study_uid, series_uid, sop_uid)
        if not keep:
            return ds
        with self._lock:
            self._kept[sop_uid] = ds
            while len(self._kept) > _KEPT:
                self._kept.popitem(last=False)
        return ds

    def worklist(self) -> list[Eye]:
        """Every eye the PACS holds a unit's report of: those the unit referred first, then those to photograph
        again, then the rest; within each, those without a verdict first, then the newest."""
        eyes: dict[str, Eye] = {}
        verdict_srs = []
        for sr in self.client.all_instances(modality="SR", fields=_LISTED):
            study = str(sr.StudyInstanceUID)
            series = _text(sr.get("SeriesDescription"))
            if series == SERIES_DESCRIPTION:
                verdict_srs.append(sr)
            elif series.startswith(UNIT_REPORT):
                eye = eyes.setdefault(study, Eye(study, _text(sr.get("PatientID")), _text(sr.get("PatientName")),
                                                 _text(sr.get("StudyDescription")), str(sr.get("StudyDate", ""))))
                eye.report_uid = str(sr.SOPInstanceUID)
                read_unit_report(eye, self._instance(study, str(sr.SeriesInstanceUID), eye.report_uid))
        for sr in verdict_srs:
            graded = eyes.get(str(sr.StudyInstanceUID))
            if graded is not None:
                found = read_verdict(self._instance(graded.study_uid, str(sr.SeriesInstanceUID), str(sr.SOPInstanceUID)))
                if found is not None:
                    graded.verdicts.append(found)
        listed = sorted(eyes.values(), key=lambda e: (e.study_date, e.study_uid), reverse=True)
        return sorted(listed, key=lambda e: (REFERRAL_ORDER.get(e.referral or "", 3), e.verdict is not None))

    def study(self, study_uid: str) -> tuple[Eye, dict[str, Dataset]] | None:
        """One eye: what the worklist says of it, and its instances' QIDO descriptions by modality (None: no
        such study of a unit)."""
        described = self.client.instances(study_uid)
        by_modality: dict[str, Dataset] = {}
        verdicts = []
        for ds in described:
            modality = str(ds.get("Modality", ""))
            series = _text(ds.get("SeriesDescription"))
            if modality == "SR" and series == SERIES_DESCRIPTION:
                verdicts.append(ds)
            elif modality == "SR" or modality not in by_modality:
                by_modality[modality] = ds
        report = by_modality.get("SR")
        if report is None:
            return None
        full = self._instance(study_uid, str(report.SeriesInstanceUID), str(report.SOPInstanceUID))
        eye = Eye(study_uid, _text(full.get("PatientID")), _text(full.get("PatientName")),
                  _text(full.get("StudyDescription")), str(full.get("StudyDate", "")), str(report.SOPInstanceUID))
        read_unit_report(eye, full)
        for ds in verdicts:
            found = read_verdict(self._instance(study_uid, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
            if found is not None:
                eye.verdicts.append(found)
        return eye, by_modality

    def photo_with_outlines(self, study_uid: str) -> bytes | None:
        """The eye's photo as a JPEG with the disc (green) and cup (yellow) outlines of the unit's Segmentation,
        as the health worker saw them; the bare photo when there is no Segmentation; None without a photo."""
        found = self.study(study_uid)
        if found is None or "OP" not in found[1]:
            return None
        described = found[1]
        op = described["OP"]
        photo = self._instance(study_uid, str(op.SeriesInstanceUID), str(op.SOPInstanceUID), keep=False)
        jpeg = next(generate_frames(photo.PixelData, number_of_frames=1))
        if "SEG" not in described:
            return bytes(jpeg)
        seg_ref = described["SEG"]
        seg = self._instance(study_uid, str(seg_ref.SeriesInstanceUID), str(seg_ref.SOPInstanceUID), keep=False)
        rgb = decode_rgb(bytes(jpeg), max_pixels=None)  # the PACS's own copy of what the unit took
        thick = max(2, int(round(min(rgb.shape[:2]) / 250)))
        colours = {"Optic disc": (40, 220, 40), "Optic cup": (255, 220, 0)}
        labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
        frames = seg.pixel_array.reshape(-1, *seg.pixel_array.shape[-2:])
        for frame, groups in zip(frames, seg.PerFrameFunctionalGroupsSequence):
            label = labels.get(int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber), "")
            if label in colours and frame.shape == rgb.shape[:2]:
                contours, _ = cv2.findContours(np.asarray(frame, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(rgb, contours, -1, colours[label], thick, lineType=cv2.LINE_AA)
        return encode_jpeg(rgb, quality=90)

    def record_verdict(self, study_uid: str, *, verdict: str, note: str, grader: str,
                       when: dt.datetime | None = None) -> StoreResult:
        """Store the grader's verdict in the study, referring to its photo and the unit's report (STOW-RS)."""
        found = self.study(study_uid)
        if found is None:
            raise LookupError(f"the PACS holds no screened eye under study {study_uid}")
        _, described = found
        report = described["SR"]
        # the unit's report whole (the verdict takes its patient and study from it), the photo and segmentation as
        # QIDO-RS described them: their UIDs and class are all a reference needs
        evidence = [self._instance(study_uid, str(report.SeriesInstanceUID), str(report.SOPInstanceUID))]
        evidence += [described[modality] for modality in ("OP", "SEG") if modality in described]
        sr = build_verdict_sr(evidence, verdict=verdict, note=note, grader=grader,
                              when=when or dt.datetime.now(dt.timezone.utc))
        return self.client.store([sr])

