"""One eye of one visit as a FHIR transaction Bundle, for an EHR that speaks FHIR rather than DICOM.

The bundle holds the Patient, the ImagingStudy naming the eye's DICOM study and its instances by the UIDs the
PACS holds them under (`device.outbox.dicom.study_uids`), one Observation each for the vCDR, the disc and cup
diameters, the glaucoma probability and the referral, a DiagnosticReport tying them together, and the unit
with the versions of its models as a Device. Codes come from `device.outbox.codes`.

Every entry is a conditional create (`ifNoneExist` on the resource's identifier; for the report, the visit's
eye), so a bundle sent again, after a sync killed between "sent" and "marked sent", creates nothing twice; the
bundle is a pure function of the visit, byte for byte. A Patient already in the EHR is referred to, not
changed: corrections are the EHR's to make.

Built and validated with fhir.resources' models. These are its R4B models, R4's technical correction: the
library ships R4B, R5 and STU3, and the elements used here are those of R4.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any
from urllib.parse import quote

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from device.outbox import codes
from device.outbox.dicom import EYES as DICOM_EYES
from device.outbox.dicom import MANUFACTURER, MODEL_NAME, OP_IMAGE, study_uids
from device.visits.visitlog import VisitLog

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"
LATERALITY = {"right": codes.Code(codes.SNOMED, "24028007", "Right"),  # PS3.16 CID 244, codes.SCT.Right
              "left": codes.Code(codes.SNOMED, "7771000", "Left")}      # codes.SCT.Left
GENDER = {"F": "female", "M": "male", "O": "other"}
FILE_NAME = "fhir-bundle.json"  # beside the DICOM files of the eye in a USB export


class BundleError(ValueError):
    """The eye cannot be written as a valid bundle (the message says what fhir.resources refused)."""


def _token(system: str, value: str) -> str:
    """`identifier=system|value` as a search parameter: FHIR's escapes for | , $ and \\ in the value (R4 3.1.1.1.5),
    then percent-encoding, so any clinic number survives the query string."""
    escaped = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return "identifier=" + quote(f"{system}|{escaped}", safe=":/|")


def _full_url(visit_uuid: str, name: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(uuid.UUID(visit_uuid), f"fhir/{name}"))


def _when(stamp: str) -> str:
    when = dt.datetime.fromisoformat(stamp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")


def _entry(full_url: str, resource: dict, identifier: dict) -> dict:
    resource = {**resource, "identifier": [identifier]}
    return {"fullUrl": full_url, "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"],
                        "ifNoneExist": _token(identifier["system"], identifier["value"])}}


def _quantity(value: float, unit: codes.Code) -> dict:
    return {"value": round(float(value), 4), "unit": unit.display, "system": unit.system, "code": unit.code}


def build_bundle(eye: dict, *, device_id: str) -> dict:
    """The transaction bundle (as JSON-ready dict, validated) of one outbox item as `VisitLog.outbox_eye` gives it.
    `device_id` stands in for visits recorded without one, as in DICOM."""
    visit, patient, capture, result = eye["visit"], eye["patient"], eye["capture"], eye["result"]
    side = eye["item"]["eye"]
    if side not in DICOM_EYES:
        raise BundleError(f"eye must be right or left, not {side!r}")
    unit = visit["device_id"] or device_id
    screening = result["screening"]
    visit_uuid = visit["uuid"]
    uids = study_uids(visit_uuid, side)
    when = _when(capture["captured_at"])
    key = f"{visit_uuid}/{side}"
    refs = {name: _full_url(visit_uuid, f"{side}/{name}") for name in
            ("study", "device", "vcdr", "disc", "cup", "probability", "referral", "report")}
    refs["patient"] = "urn:uuid:" + str(uuid.uuid5(uuid.UUID(visit_uuid), "fhir/patient"))
    site = codes.EYE_SITE[side].concept()
    entries = []

    person: dict[str, Any] = {"resourceType": "Patient", "active": True}
    if patient.get("name"):
        person["name"] = [{"text": patient["name"]}]
    if patient.get("sex") in GENDER:
        person["gender"] = GENDER[patient["sex"]]
    if patient.get("year_of_birth"):
        person["birthDate"] = f"{int(patient['year_of_birth']):04d}"  # FHIR's date may be a year alone
    if patient.get("phone"):
        person["telecom"] = [{"system": "phone", "value": patient["phone"]}]
    if patient.get("address"):
        person["address"] = [{"text": patient["address"]}]
    entries.append(_entry(refs["patient"], person, {"system": codes.patient_numbers(unit), "value": patient["identifier"]}))
    subject = {"reference": refs["patient"]}

    versions = sorted((result["screening"].get("model_versions") or {}).items())
    model_set = hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]
    entries.append(_entry(refs["device"], {
        "resourceType": "Device", "status": "active", "manufacturer": MANUFACTURER, "serialNumber": unit,
        "deviceName": [{"name": f"{MODEL_NAME} {unit}", "type": "user-friendly-name"}],
        "type": codes.FUNDUS_CAMERA.concept(),
        "version": [{"type": {"text": name}, "value": str(version)} for name, version in versions]},
        {"system": codes.MODEL_SET, "value": f"{unit}/{model_set}"}))

    series = [("photo", OP_IMAGE, "OP", f"Fundus photo, {side} eye")]
    if result.get("masks_sha256"):
        series.append(("seg", SEGMENTATION_STORAGE, "SEG", f"Optic disc and cup, {side} eye"))
    series.append(("sr", COMPREHENSIVE_SR_STORAGE, "SR", f"Screening result, {side} eye"))
    dcm = {"OP": codes.OPHTHALMIC_PHOTOGRAPHY.coding(),
           "SEG": {"system": codes.DCM, "code": "SEG", "display": "Segmentation"},
           "SR": {"system": codes.DCM, "code": "SR", "display": "SR Document"}}
    entries.append(_entry(refs["study"], {
        "resourceType": "ImagingStudy", "status": "available", "subject": subject, "started": when,
        "modality": [dcm["OP"]], "numberOfSeries": len(series), "numberOfInstances": len(series),
        "description": f"Glaucoma screening, {side} eye",
        "series": [{"uid": uids[f"{kind}_series"], "number": number, "modality": dcm[modality], "description": text,
                    "numberOfInstances": 1, "bodySite": codes.EYE_SITE[side].coding(),
                    "laterality": LATERALITY[side].coding(),
                    "instance": [{"uid": uids[kind], "number": 1,
                                  "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{sop_class}"}}]}
                   for number, (kind, sop_class, modality, text) in enumerate(series, 1)]},
        {"system": codes.DICOM_UID, "value": f"urn:oid:{uids['study']}"}))

    def observation(name: str, code: codes.Code, **value: Any) -> str:
        entries.append(_entry(refs[name], {
            "resourceType": "Observation", "status": "preliminary",  # the reading centre has not reviewed it
            "category": [codes.IMAGING.concept()], "code": code.concept(), "subject": subject,
            "effectiveDateTime": when, "bodySite": site, "device": {"reference": refs["device"]},
            "derivedFrom": [{"reference": refs["study"]}], **value},
            {"system": codes.VISIT_EYE, "value": f"{key}/{name}"}))
        return refs[name]

    results = []
    if screening.get("vcdr") is not None:
        results.append(observation("vcdr", codes.VCDR, valueQuantity=_quantity(screening["vcdr"], codes.RATIO_UNIT)))
    for name, code, region in (("disc", codes.DISC_DIAMETERS, screening.get("disc")),
                               ("cup", codes.CUP_DIAMETERS, screening.get("cup"))):
        if region:
            results.append(observation(name, code, component=[
                {"code": codes.VERTICAL_DIAMETER.concept(),
                 "valueQuantity": _quantity(region["vertical_diameter"], codes.PIXELS_UNIT)},
                {"code": codes.HORIZONTAL_DIAMETER.concept(),
                 "valueQuantity": _quantity(region["horizontal_diameter"], codes.PIXELS_UNIT)}]))
    if screening.get("glaucoma_probability") is not None:
        results.append(observation("probability", codes.GLAUCOMA_PROBABILITY, valueQuantity=_quantity(
            screening["glaucoma_probability"], codes.PROBABILITY_UNIT)))
    referral = screening.get("referral")
    if referral not in codes.REFERRAL_VALUES:
        raise BundleError(f"the screening result's referral must be refer, rescreen or normal, not {referral!r}")
    reasons = [str(r) for r in screening.get("referral_reasons") or []]
    results.append(observation("referral", codes.REFERRAL, valueCodeableConcept=codes.REFERRAL_VALUES[referral].concept(),
                               **({"note": [{"text": r} for r in reasons]} if reasons else {})))

    headline = screening.get("referral_headline") or codes.REFERRAL_VALUES[referral].display
    entries.append(_entry(refs["report"], {
        "resourceType": "DiagnosticReport", "status": "preliminary", "code": codes.SCREENING_REPORT.concept(),
        "subject": subject, "effectiveDateTime": when, "issued": when,
        "result": [{"reference": ref} for ref in results], "imagingStudy": [{"reference": refs["study"]}],
        "conclusion": " ".join([f"{headline}.", *reasons]),
        "conclusionCode": [codes.REFERRAL_VALUES[referral].concept()]},
        {"system": codes.VISIT_EYE, "value": key}))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    validate(bundle)
    return bundle


def validate(bundle: dict) -> Bundle:
    """The bundle as fhir.resources reads it; BundleError with its first complaints when it is not valid FHIR."""
    try:
        return Bundle.model_validate(bundle)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        raise BundleError(f"not a valid FHIR bundle: {problems}") from None


def bundle_bytes(bundle: dict) -> bytes:
    """The bundle as sent and exported: UTF-8 JSON, the same bytes for the same visit."""
    return json.dumps(bundle, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encode_item(visits: VisitLog, item_id: int, device_id: str) -> bytes:
    """The bundle of one outbox item (of either kind: both name the same eye), as bytes."""
    return bundle_bytes(build_bundle(visits.outbox_eye(item_id), device_id=device_id))
