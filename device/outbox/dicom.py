"""One eye of one visit as the DICOM objects a reading centre's PACS understands.

Per eye, one study of three instances:
- the camera's photo as an Ophthalmic Photography 8 Bit Image, the JPEG kept byte for byte (JPEG
  Baseline transfer syntax), so the archive holds exactly what the health worker saw;
- a binary Segmentation of the optic disc and cup drawn on that photo;
- a Comprehensive SR following TID 1500 (Measurement Report): vCDR, glaucoma probability, the
  referral with its reasons in words, and the versions of the models that decided.

Everything is a pure function of the visit. UIDs are "2.25." + the integer of a name-based UUID
of (visit UUID, eye, object), the DICOM rule for UUID-derived UIDs; dates and times come from when
the photo was taken, never from the clock. Sending a visit again therefore stores nothing twice,
and the same visit always encodes to the same bytes.
"""
from __future__ import annotations

import copy
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import UID, JPEGBaseline8Bit

from device.screening.result import Assessment, StoredResult
from models.runtime.images import decode_rgb, encode_jpeg

MANUFACTURER = "GlaucoScreen Edge"
MODEL_NAME = "GlaucoScreen Edge screening unit"
OP_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # Ophthalmic Photography 8 Bit Image Storage
VL_PHOTOGRAPHIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
UTC_SYNCHRONIZATION = "1.2.840.10008.15.1.1"  # well-known Frame of Reference: Universal Coordinated Time
EYES = {"right": "R", "left": "L"}
KINDS = ("study", "photo_series", "photo", "seg_series", "seg", "sr_series", "sr")

# Fixed namespaces: the unit's implementation UID and each unit's observer UID derive from them.
_PROJECT_NAMESPACE = uuid.UUID("6dfbcc57-01f5-45b9-9150-5e1298044ee5")
IMPLEMENTATION_UID = "2.25." + str(uuid.uuid5(_PROJECT_NAMESPACE, "implementation").int)
IMPLEMENTATION_VERSION = "GLAUCOSCREEN_1"

# --- Codes -------------------------------------------------------------------------------------
# Optic disc: SNOMED CT 81016008. DICOM PS3.16 lists it as (81016008, SCT, "Optic nerve head") in
# CID 4209 "Ophthalmic Anatomic Structure Imaged" and CID 4266; pydicom's DICOM code dictionary
# names it "Optic disc structure" (codes.SCT.OpticDiscStructure).
OPTIC_DISC = hd.sr.CodedConcept("81016008", "SCT", "Optic disc")
# Optic cup: SNOMED CT has an "Optic disc cup" body structure (the target of 12451000 |Optic
# cupping|), but we could not confirm its concept id from a citable source, so the cup carries a
# local code (a "99" coding scheme, as PS3.3 8.2 allows) inside the optic disc's anatomic region.
# Replace it with the SNOMED CT id once confirmed.
LOCAL_SCHEME = "99GLSCR"
OPTIC_CUP = hd.sr.CodedConcept("optic-cup", LOCAL_SCHEME, "Optic cup")
# Segmented property category: (91723000, SCT, "Anatomical Structure"), CID 7150.
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure
RETINA = codes.SCT.Retina  # (5665001, SCT), CID 4209: what a fundus photo images
EYE = codes.SCT.Eye  # (81745001, SCT)
FUNDUS_CAMERA = codes.SCT.FundusCamera  # (409898007, SCT), CID 4202 Ophthalmic Image Acquisition Device
LATERALITY = {"right": codes.SCT.Right, "left": codes.SCT.Left}  # 24028007 / 7771000
GLAUCOMA = hd.sr.CodedConcept("23986001", "SCT", "Glaucoma")
# Cup-to-disc ratios: DICOM PS3.16 CID 4281 "Optic Disc Key Measurements" (2025), unit {ratio}.
VCDR = hd.sr.CodedConcept("131257", "DCM", "Cup to disc ratio vertical")
HCDR = hd.sr.CodedConcept("131258", "DCM", "Cup to disc ratio horizontal")
AREA_CDR = hd.sr.CodedConcept("131256", "DCM", "Cup to disc area ratio")
RATIO = hd.sr.CodedConcept("{ratio}", "UCUM", "ratio")
PROBABILITY = codes.DCM.Probability  # (122157, DCM)
NO_UNITS = codes.UCUM.NoUnits  # (1, UCUM, "no units")
SCREENING = codes.SCT.Screening  # (360156006, SCT)
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")  # TID 1500 row
REFERRAL = hd.sr.CodedConcept("referral", LOCAL_SCHEME, "Referral decision")
REFERRAL_VALUES = {
    "refer": hd.sr.CodedConcept("refer", LOCAL_SCHEME, "Refer to an eye doctor"),
    "rescreen": hd.sr.CodedConcept("rescreen", LOCAL_SCHEME, "Take the photo again"),
    "normal": hd.sr.CodedConcept("normal", LOCAL_SCHEME, "No glaucoma signs seen"),
}
REFERRAL_REASON = hd.sr.CodedConcept("referral-reason", LOCAL_SCHEME, "Referral reason")
MODEL_VERSION = hd.sr.CodedConcept("model-version", LOCAL_SCHEME, "Model version")
PROGRESSION = hd.sr.CodedConcept("progression", LOCAL_SCHEME, "Change since the first visit")
PROGRESSION_CHANGE = hd.sr.CodedConcept("disc-change", LOCAL_SCHEME, "Change measured in the registered frame")
PROGRESSION_TREND = hd.sr.CodedConcept("disc-trend", LOCAL_SCHEME, "Trend across visits")
REGISTRATION_QUALITY = hd.sr.CodedConcept("registration", LOCAL_SCHEME, "Registration of the earlier photo")
OPTICAL_CALIBRATION = hd.sr.CodedConcept("calibration", LOCAL_SCHEME, "Optical calibration of the photo")
LIGHT_DOSE = hd.sr.CodedConcept("light-dose", LOCAL_SCHEME, "Light delivered to the eye")
CHANGE_NAMES = {"vcdr": "Cup-to-disc ratio (vertical)", "cup_area": "Cup area (share of the disc)",
                "rim_superior": "Rim, superior quarter (share of the disc)",
                "rim_inferior": "Rim, inferior quarter (share of the disc)",
                "rim_nasal": "Rim, nasal quarter (share of the disc)",
                "rim_temporal": "Rim, temporal quarter (share of the disc)"}
_LOCAL_CODES = CodingSchemeIdentificationItem(
    designator=LOCAL_SCHEME, name="GlaucoScreen Edge local codes", responsible_organization=MANUFACTURER)


@dataclass(frozen=True)
class EyeStudy:
    """Everything needed to encode one eye of one visit.

    `captured_at` is when the photo was taken (UTC; a naive datetime is read as UTC). The masks are
    boolean and the photo's size, or both None when nothing was segmented. `result` is the
    screening JSON as the visit log stores it (`ScreeningResult.to_dict()`); the objects are built
    from its typed reading, `screening`. `pixel_spacing_mm` is the unit's nominal spacing at the
    retina from its optical calibration, where known. `calibration` (version, date, module serial) is the
    optical calibration the photo was corrected with (None: not corrected); `light_dose` the light the eye
    got in the visit and the limits it was held to (`VisitLog.light_dose`; None: not recorded).
    """

    visit_uuid: str
    eye: str
    device_id: str
    patient_id: str
    patient_name: str | None
    year_of_birth: int | None
    sex: str | None
    captured_at: datetime
    photo_jpeg: bytes
    disc_mask: np.ndarray | None
    cup_mask: np.ndarray | None
    result: dict
    pixel_spacing_mm: float | None = None
    calibration: dict | None = None
    light_dose: dict | None = None

    @property
    def screening(self) -> StoredResult:
        return StoredResult.from_dict(self.result)


def study_uids(visit_uuid: str, eye: str) -> dict[str, str]:
    """The study, series and instance UIDs of one eye of one visit, the same on every call."""
    namespace = _visit_namespace(visit_uuid)
    eye = _check_eye(eye)
    return {kind: _uid(namespace, f"{eye}/{kind}") for kind in KINDS}


def build_datasets(study: EyeStudy) -> list[Dataset]:
    """[photo, segmentation (when there are masks), structured report] for one eye."""
    uids = study_uids(study.visit_uuid, study.eye)
    screening = study.screening
    photo = _photo(study, uids)
    has_masks = study.disc_mask is not None or study.cup_mask is not None
    seg = _segmentation(study, screening, uids, photo) if has_masks else None
    report = _report(study, screening, uids, photo, seg)
    return [photo, report] if seg is None else [photo, seg, report]


# --- UIDs, dates, patient ----------------------------------------------------------------------

def _uid(namespace: uuid.UUID, name: str) -> str:
    return "2.25." + str(uuid.uuid5(namespace, name).int)


def _visit_namespace(visit_uuid: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(visit_uuid))
    except ValueError:
        raise ValueError(f"visit UUID {visit_uuid!r} is not a UUID "
                         "(expected e.g. 1b4e28ba-2fa1-11d2-883f-0016d3cca427)") from None


def _check_eye(eye: str) -> str:
    if eye not in EYES:
        raise ValueError(f"eye must be 'right' or 'left', not {eye!r}")
    return eye


def _device_uid(device_id: str) -> str:
    return _uid(_PROJECT_NAMESPACE, f"device/{device_id}")


def _utc(when: datetime) -> datetime:
    if not isinstance(when, datetime):
        raise ValueError(f"captured_at must be a datetime, not {type(when).__name__}")
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def _da(when: datetime) -> str:
    return when.strftime("%Y%m%d")


def _tm(when: datetime) -> str:
    return when.strftime("%H%M%S.%f")


class PatientDataError(ValueError):
    """A patient detail DICOM cannot carry. Sending again will not help; correcting the patient will."""

    def __init__(self, problem: str, patient_id: str):
        super().__init__(f"{problem}. An admin can correct it: Patients, {patient_id}, Edit details; "
                         "the eye is then sent again.")


def _lo(value: str, what: str, patient_id: str | None = None) -> str:
    """A Long String (64 characters, no backslash): patient and device identifiers."""
    value = str(value).strip()
    problem = None
    if not value:
        problem = f"the {what} is empty"
    elif len(value) > 64 or "\\" in value:
        problem = f"the {what} {value!r} must be at most 64 characters without a backslash"
    if problem is None:
        return value
    if patient_id is not None:
        raise PatientDataError(problem, patient_id)
    raise ValueError(problem)


PN_GROUP_CHARACTERS = 64  # DICOM PS3.5 6.2: at most 64 characters per component group


def person_name(name: str | None) -> tuple[str, bool]:
    """The kiosk's one free-text name as a DICOM Person Name, and whether it had to be shortened.

    The kiosk does not know which word is the family name (that differs by culture), so the whole name is
    the family-name component. The rule for a name over 64 characters: words between the first and the
    last become initials, from the last but one towards the first, until it fits; if the first and last
    words alone are still too long, the name is cut to fit. The full name then goes in
    Patient Comments, which DICOM allows to be long.
    """
    if not name:
        return "", False
    words = re.sub(r"[\^=\\\x00-\x1f\x7f]", " ", name).split()
    limit = PN_GROUP_CHARACTERS - 1  # one character for the trailing component separator

    def joined() -> str:
        return " ".join(words)

    for i in range(len(words) - 2, 0, -1):
        if len(joined()) <= limit:
            break
        words[i] = words[i][0] + "."
    text = joined()
    shortened = text != " ".join(name.split())
    if len(text) > limit:
        text, shortened = text[:limit].rstrip(), True
    return text + "^", shortened


def _sex(sex: str | None) -> str:
    if not sex:
        return ""
    code = {"f": "F", "female": "F", "m": "M", "male": "M", "o": "O", "other": "O",
            "u": "", "unknown": ""}.get(str(sex).strip().lower())
    if code is None:
        raise ValueError(f"sex {sex!r} is not one of female, male, other or unknown")
    return code


def _patient_and_study(ds: Dataset, study: EyeStudy, uids: dict[str, str], when: datetime) -> None:
    """Patient, study and visit identifiers shared by the three objects of an eye."""
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names are typed in the clinic's own language
    ds.PatientName, shortened = person_name(study.patient_name)
    if shortened:
        ds.PatientComments = f"Full name as registered: {' '.join((study.patient_name or '').split())}"
    ds.PatientID = _lo(study.patient_id, "patient ID", patient_id=study.patient_id)
    ds.PatientBirthDate = ""
    if study.year_of_birth:
        year = int(study.year_of_birth)
        if not 0 <= when.year - year < 150:
            raise PatientDataError(f"the year of birth {study.year_of_birth} does not fit a visit in {when.year}",
                                   study.patient_id)
        # DA has no year-only form; 1 January is the usual convention for a birth date known by year.
        ds.PatientBirthDate = f"{year:04d}0101"
        ds.PatientAge = f"{when.year - year:03d}Y"
    try:
        ds.PatientSex = _sex(study.sex)
    except ValueError as exc:
        raise PatientDataError(str(exc), study.patient_id) from exc
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = _da(when)
    ds.StudyTime = _tm(when)
    ds.StudyID = uuid.UUID(study.visit_uuid).hex[:16]
    ds.AccessionNumber = ""  # issued by the hospital's RIS, which a screening camp does not have
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Glaucoma screening, {study.eye} eye"
    ds.AdmissionID = str(uuid.UUID(study.visit_uuid))  # the visit, as the unit's visit log knows it
    ds.TimezoneOffsetFromUTC = "+0000"


def _software_versions(result: StoredResult) -> list[str]:
    return [f"{k} {v}"[:64] for k, v in sorted(result.model_versions.items())] or ["unknown"]


def _algorithm_version(result: StoredResult) -> str:
    text = "; ".join(_software_versions(result))
    return text if len(text) <= 64 else text[:61] + "..."


# --- The photo ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Jpeg:
    rows: int
    columns: int
    components: int
    baseline: bool
    subsampled: bool
    adobe_rgb: bool


def _read_jpeg_header(data: bytes) -> _Jpeg:
    """Frame header facts DICOM needs (size, colour model, baseline or not) without decoding."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("the photo is not a JPEG (it does not start with the JPEG start-of-image marker)")
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise ValueError("the photo's JPEG is truncated (it ends before the image does)")
    i, adobe_rgb = 2, False
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise ValueError("the photo's JPEG header is damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        segment = data[i + 4:i + 2 + length]
        if marker == 0xEE and segment[:5] == b"Adobe" and len(segment) >= 12:
            adobe_rgb = segment[11] == 0  # transform 0: the samples are RGB, not YCbCr
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision, rows = segment[0], int.from_bytes(segment[1:3], "big")
            columns, components = int.from_bytes(segment[3:5], "big"), segment[5]
            sampling = [segment[6 + 3 * c + 1] for c in range(components)]
            if precision != 8 or rows == 0 or columns == 0 or components not in (1, 3):
                raise ValueError("the photo is not an 8-bit greyscale or colour JPEG of known size")
            return _Jpeg(rows, columns, components, baseline=marker == 0xC0,
                         subsampled=len(set(sampling)) > 1, adobe_rgb=adobe_rgb)
        if marker == 0xDA:
            break
        i += 2 + length
    raise ValueError("the photo's JPEG has no frame header (truncated or not a photo)")


def _baseline_jpeg(data: bytes) -> tuple[bytes, _Jpeg]:
    """The camera's JPEG as is when it is baseline, which the OP IOD's transfer syntax needs;
    a progressive or extended JPEG is re-encoded once as baseline (deterministically)."""
    header = _read_jpeg_header(data)
    if header.baseline:
        return data, header
    data = encode_jpeg(decode_rgb(data, max_pixels=None), quality=95)  # stored: bounded when it came in
    return data, _read_jpeg_header(data)


def _photo(study: EyeStudy, uids: dict[str, str]) -> Dataset:
    when = _utc(study.captured_at)
    jpeg, header = _baseline_jpeg(bytes(study.photo_jpeg))
    ds = Dataset()
    ds.file_meta = _file_meta(OP_IMAGE, uids["photo"], JPEGBaseline8Bit)
    _patient_and_study(ds, study, uids, when)
    ds.SOPClassUID = OP_IMAGE
    ds.SOPInstanceUID = uids["photo"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(when), _tm(when)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if study.calibration:  # corrected pixel by pixel from what the sensor gave: derived, and said how
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.DerivationDescription = _calibration_text(study.calibration)[:1024]
        calibrated = _calibration_time(study.calibration)
        if calibrated is not None:
            ds.DateOfLastCalibration, ds.TimeOfLastCalibration = _da(calibrated), _tm(calibrated)
    ds.Modality = "OP"
    ds.SeriesInstanceUID = uids["photo_series"]
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = _da(when), _tm(when)
    ds.SeriesDescription = f"Fundus photo, {study.eye} eye"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = _da(when), _tm(when)
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S.%f+0000")
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.DeviceSerialNumber = _lo(study.device_id, "device ID")
    ds.PatientOrientation = ""
    ds.ImageLaterality = EYES[study.eye]
    ds.AnatomicRegionSequence = [hd.sr.CodedConcept(RETINA.value, RETINA.scheme_designator, RETINA.meaning)]
    # Synchronization module: the unit's clock is the only clock involved.
    ds.SynchronizationTrigger = "NO TRIGGER"
    ds.AcquisitionTimeSynchronized = "N"
    ds.SynchronizationFrameOfReferenceUID = UTC_SYNCHRONIZATION
    # Image pixel: what the JPEG's own frame header says (PS3.5 8.2.1 for the colour models).
    ds.Rows, ds.Columns = header.rows, header.columns
    ds.SamplesPerPixel = header.components
    if header.components == 3:
        ycbcr = "YBR_FULL_422" if header.subsampled else "YBR_FULL"
        ds.PhotometricInterpretation = "RGB" if header.adobe_rgb else ycbcr
        ds.PlanarConfiguration = 0
    else:
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = 1
    ds.FrameIncrementPointer = Tag("FrameTime")
    ds.FrameTime = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{header.rows * header.columns * header.components / len(jpeg):.2f}"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    if study.pixel_spacing_mm:
        ds.PixelSpacing = [f"{study.pixel_spacing_mm:.6g}"] * 2
    # Ophthalmic acquisition and photographic parameters the unit does not measure: Type 2, empty.
    ds.PatientEyeMovementCommanded = ""
    ds.EmmetropicMagnification = None
    ds.IntraOcularPressure = None
    ds.HorizontalFieldOfView = None
    ds.PupilDilated = ""
    ds.RefractiveStateSequence = Sequence()
    ds.DetectorType = ""
    ds.AcquisitionDeviceTypeCodeSequence = [
        hd.sr.CodedConcept(FUNDUS_CAMERA.value, FUNDUS_CAMERA.scheme_designator, FUNDUS_CAMERA.meaning)]
    ds.IlluminationTypeCodeSequence = Sequence()
    ds.LightPathFilterTypeStackCodeSequence = Sequence()
    ds.ImagePathFilterTypeStackCodeSequence = Sequence()
    ds.LensesCodeSequence = Sequence()
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    return ds


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    # pydicom stores every UI value as a UID anyway; wrapping here only states it to the type checker.
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    return meta


# --- The segmentation --------------------------------------------------------------------------

def _segmentation(study: EyeStudy, result: StoredResult, uids: dict[str, str], photo: Dataset) -> Dataset:
    when = _utc(study.captured_at)
    shape = (photo.Rows, photo.Columns)
    masks = []
    for name, mask in (("disc", study.disc_mask), ("cup", study.cup_mask)):
        if mask is None:
            raise ValueError(f"the {name} mask is missing: give both disc and cup masks, or neither")
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"the {name} mask is {mask.shape[1]}x{mask.shape[0]} pixels but the photo is "
                             f"{shape[1]}x{shape[0]}: masks must be on the photo's own pixel grid")
        masks.append(mask.astype(bool))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="GlaucoScreen Edge disc/cup segmentation", family=codes.DCM.ArtificialIntelligence,
        version=_algorithm_version(result),
        parameters={k: str(v) for k, v in sorted(result.model_versions.items())} or None)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=1, segment_label="Optic disc", segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=OPTIC_DISC, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            tracking_uid=_uid(_visit_namespace(study.visit_uuid), f"{study.eye}/disc-segment"),
            tracking_id="Optic disc", anatomic_regions=[OPTIC_DISC]),
        hd.seg.SegmentDescription(
            segment_number=2, segment_label="Optic cup", segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=OPTIC_CUP, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            tracking_uid=_uid(_visit_namespace(study.visit_uuid), f"{study.eye}/cup-segment"),
            tracking_id="Optic cup", anatomic_regions=[OPTIC_DISC]),
    ]
    # highdicom reads OP (a classic multi-frame IOD) as an enhanced multi-frame image and looks for
    # functional groups that OP does not have. It is given the photo's header under the single-frame
    # VL Photographic Image class instead, and the references are pointed back at OP afterwards.
    # Pixel spacing stays with the photo: the segmentation shares its grid by reference.
    source = Dataset()
    for elem in photo:
        if elem.keyword not in ("PixelData", "NumberOfFrames", "FrameIncrementPointer", "FrameTime", "PixelSpacing"):
            source.add(copy.deepcopy(elem))
    source.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=np.stack(masks, axis=-1)[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=uids["seg_series"], series_number=2, sop_instance_uid=uids["seg"], instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=_software_versions(result),  # type: ignore[arg-type]  # highdicom: tuple[str] should be Sequence[str]
        device_serial_number=_lo(study.device_id, "device ID"),
        content_label="DISC_CUP", content_description="Optic disc and cup", omit_empty_frames=False,
        series_description=f"Optic disc and cup, {study.eye} eye", coding_schemes=[_LOCAL_CODES],
        content_date=_da(when), content_time=_tm(when), series_date=_da(when), series_time=_tm(when))
    _point_references_at(seg, VL_PHOTOGRAPHIC_IMAGE, OP_IMAGE)
    dimensions_uid = _uid(_visit_namespace(study.visit_uuid), f"{study.eye}/seg-dimensions")
    for item in list(seg.DimensionOrganizationSequence) + list(seg.DimensionIndexSequence):
        item.DimensionOrganizationUID = dimensions_uid
    _fix_creation_time(seg, when)
    return seg


def _point_references_at(ds: Dataset, old: str, new: str) -> None:
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPClassUID" and elem.value == old:
            elem.value = new


def _fix_creation_time(ds: Dataset, when: datetime) -> None:
    """highdicom stamps instances with the wall clock; a resend must produce the same bytes, so
    creation and contribution times become the capture time (the result is made within seconds)."""
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(when), _tm(when)
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S.%f+0000")
    ds.file_meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION


# --- The structured report ---------------------------------------------------------------------

def _header(ds: Dataset) -> Dataset:
    """The dataset without its pixels: all the report needs of its evidence. highdicom deep-copies
    its evidence several times, and skipping the pixels halves the time a report takes to build."""
    out = Dataset()
    for elem in ds:
        if elem.tag != 0x7FE00010:
            out.add(elem)
    return out


def _report(study: EyeStudy, result: StoredResult, uids: dict[str, str], photo: Dataset, seg: Dataset | None) -> Dataset:
    photo = _header(photo)
    seg = None if seg is None else _header(seg)
    when = _utc(study.captured_at)
    referral = result.referral
    if referral not in REFERRAL_VALUES:
        raise ValueError(f"the screening result's referral must be refer, rescreen or normal, not {referral!r}")
    namespace = _visit_namespace(study.visit_uuid)
    laterality = LATERALITY[study.eye]
    algorithm = hd.sr.AlgorithmIdentification(
        name="GlaucoScreen Edge", version=_algorithm_version(result),
        parameters=[f"{k}: {v}" for k, v in sorted(result.model_versions.items())] or None)
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations] = []
    disc_measurements = _cdr_measurements(result)
    if disc_measurements:
        disc_group: dict[str, Any] = dict(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(namespace, f"{study.eye}/disc-tracking"),
                                                         identifier="Optic disc"),
            finding_type=OPTIC_DISC, finding_sites=[hd.sr.FindingSite(OPTIC_DISC, laterality=laterality)],
            algorithm_id=algorithm, measurements=disc_measurements)
        if seg is not None:
            groups.append(hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                referenced_segment=hd.sr.ReferencedSegmentationFrame.from_segmentation(seg, segment_number=1),
                **disc_group))
        else:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(photo)], **disc_group))
    probability = result.glaucoma_probability
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=_uid(namespace, f"{study.eye}/glaucoma-tracking"),
                                                     identifier="Glaucoma assessment"),
        finding_type=GLAUCOMA, finding_sites=[hd.sr.FindingSite(EYE, laterality=laterality)],
        algorithm_id=algorithm,
        measurements=None if probability is None else [hd.sr.Measurement(PROBABILITY, float(probability), NO_UNITS)],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(REFERRAL, REFERRAL_VALUES[referral])],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(photo)]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=_device_uid(study.device_id), name=_lo(study.device_id, "device ID"),
                manufacturer_name=MANUFACTURER, model_name=MODEL_NAME, serial_number=study.device_id))),
        procedure_reported=SCREENING, imaging_measurements=groups, referenced_images=[photo])
    root = report[0]
    root.ContentSequence.append(_qualitative_evaluations(result, study))
    evidence = [photo] if seg is None else [photo, seg]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence, content=root, series_instance_uid=uids["sr_series"], series_number=3,
        sop_instance_uid=uids["sr"], instance_number=1, manufacturer=MANUFACTURER,
        is_complete=True, is_final=False,  # preliminary: the reading centre has not reviewed it yet
        manufacturer_model_name=MODEL_NAME, software_versions=_software_versions(result),
        device_serial_number=_lo(study.device_id, "device ID"), coding_schemes=[_LOCAL_CODES],
        series_description=f"Screening result, {study.eye} eye",
        content_date=_da(when), content_time=_tm(when), series_date=_da(when), series_time=_tm(when))
    for keyword in ("SpecificCharacterSet", "PatientAge", "StudyDescription", "AdmissionID", "TimezoneOffsetFromUTC"):
        if keyword in photo:
            sr[keyword] = photo[keyword]
    _fix_creation_time(sr, when)
    return sr


def _cdr_measurements(result: StoredResult) -> list[hd.sr.Measurement]:
    out = []
    for concept, value in ((VCDR, result.vcdr), (HCDR, result.hcdr), (AREA_CDR, result.area_cdr)):
        if value is not None:
            out.append(hd.sr.Measurement(concept, float(value), RATIO))
    return out


def _progression_text(p: Assessment) -> str:
    """The verdict in the worker's words, then the figures a reader checks it against."""
    text = str(p.message)
    if p.vcdr_then is not None and p.vcdr_now is not None:
        text += (f" Cup-to-disc ratio {p.vcdr_then:.2f} at {str(p.compared_with or '')[:10]}, "
                 f"{p.vcdr_now:.2f} now ({p.years or 0:.1f} years)")
        text += ", measured together in today's frame." if p.changes else "."
    if p.exceeds_noise is not None:
        text += (f" {'A' if p.exceeds_noise else 'No'} change beyond photo-to-photo noise "
                 f"at {p.confidence or 0.95:.0%} confidence.")
    if p.engine_probability is not None:
        text += f" Progression engine: {p.engine_probability:.0%} (research output, not a decision)."
    return text[:1024]  # a TEXT item's value stays within what a PACS displays


def _change_text(change: dict) -> str:
    """One measure's change between the two visits, against the noise it had to exceed."""
    name = CHANGE_NAMES.get(str(change.get("measure")), str(change.get("measure")))
    verdict = "beyond the noise" if change.get("exceeds") else "within the noise"
    return (f"{name}: {change['then']:.3f} then, {change['now']:.3f} now, change {change['change']:+.3f}; "
            f"{verdict} (a change towards worsening must exceed {change['limit']:.3f}; noise SD {change['noise_sd']:.3f})")[:1024]


def _trend_text(trend: dict) -> str:
    name = CHANGE_NAMES.get(str(trend.get("measure")), str(trend.get("measure")))
    return (f"{name}: {trend['slope']:+.3f} per year over {trend['visits']} visits and {trend['years']:.1f} years "
            f"({trend['confidence']:.0%} interval {trend['low']:+.3f} to {trend['high']:+.3f}); "
            f"{'worsening' if trend.get('worsening') else 'no trend beyond the noise'}")[:1024]


def _registration_text(reg: dict) -> str:
    """How well the earlier photo lined up with today's: the figures a reader judges the change by."""
    if not reg.get("aligned"):
        return f"Not aligned: {reg.get('refusal') or 'no reason recorded'}"[:1024]
    text = f"Aligned: {reg.get('matches')} matching points, vessel correlation {reg.get('correlation'):.2f}, "
    text += f"overlap {reg.get('overlap', 0):.0%}"
    if reg.get("scale") is not None and reg.get("turn_deg") is not None:
        text += f", scale {reg['scale']:.3f}, turn {reg['turn_deg']:.1f} degrees"
    if reg.get("visits_tried"):
        text += f"; {reg.get('visits_aligned')} of {reg['visits_tried']} earlier visits lined up"
    return text[:1024]


def _progression_items(p: Assessment) -> list[hd.sr.TextContentItem]:
    items = [hd.sr.TextContentItem(PROGRESSION, _progression_text(p), relationship_type="CONTAINS")]
    if p.registration:
        items.append(hd.sr.TextContentItem(REGISTRATION_QUALITY, _registration_text(p.registration),
                                           relationship_type="CONTAINS"))
    items += [hd.sr.TextContentItem(PROGRESSION_CHANGE, _change_text(c), relationship_type="CONTAINS") for c in p.changes]
    if p.trend:
        items.append(hd.sr.TextContentItem(PROGRESSION_TREND, _trend_text(p.trend), relationship_type="CONTAINS"))
    return items


def _qualitative_evaluations(result: StoredResult, study: EyeStudy) -> hd.sr.ContainerContentItem:
    """TID 1500's root "Qualitative Evaluations": the referral's reasons, the comparison with the eye's
    first visit (the verdict, how well the photos lined up, each measure's change against its noise and
    the trend), the model versions, the optical calibration the photo was corrected with and the light the
    eye got, in words."""
    container = hd.sr.ContainerContentItem(QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items = [hd.sr.TextContentItem(REFERRAL_REASON, str(reason), relationship_type="CONTAINS")
             for reason in result.reasons]
    if result.progression is not None:
        items += _progression_items(result.progression)
    items += [hd.sr.TextContentItem(MODEL_VERSION, f"{name}: {version}", relationship_type="CONTAINS")
              for name, version in sorted(result.model_versions.items())]
    items.append(hd.sr.TextContentItem(OPTICAL_CALIBRATION, (_calibration_text(study.calibration) if study.calibration
                                                             else "Not corrected: the optic module had no calibration")[:1024],
                                       relationship_type="CONTAINS"))
    if study.light_dose:
        items.append(hd.sr.TextContentItem(LIGHT_DOSE, _light_dose_text(study.light_dose), relationship_type="CONTAINS"))
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _calibration_text(calibration: dict) -> str:
    return (f"Corrected for dark level, flat field and white balance with optical calibration version "
            f"{calibration.get('version')} of {calibration.get('date')} (optic module {calibration.get('module_serial')})")


def _calibration_time(calibration: dict) -> datetime | None:
    try:
        return _utc(datetime.fromisoformat(str(calibration.get("date"))))
    except ValueError:
        return None


def _light_dose_text(dose: dict) -> str:
    """The light the eye got in the visit, in physical units, and the limits it was checked against."""
    preview, flash, limits = dose.get("preview", {}), dose.get("flash", {}), dose.get("limits", {})
    text = (f"Preview {preview.get('seconds', 0):.1f} s, {preview.get('radiant_exposure_mj_cm2', 0):.4g} mJ/cm2 "
            f"(mean {preview.get('mean_irradiance_mw_cm2', 0):.4g} mW/cm2); {flash.get('count', 0)} flashes, "
            f"{flash.get('seconds', 0):.2f} s, {flash.get('radiant_exposure_mj_cm2', 0):.4g} mJ/cm2; in all "
            f"{dose.get('radiant_exposure_mj_cm2', 0):.4g} mJ/cm2, at most {dose.get('peak_irradiance_mw_cm2', 0):.4g} "
            f"mW/cm2 at the pupil. Limits: {limits.get('max_irradiance_mw_cm2', '?')} mW/cm2 continuous, "
            f"{limits.get('visit_exposure_mj_cm2', '?')} mJ/cm2 per eye per visit ({limits.get('basis', '')})")
    if dose.get("stopped"):
        text += f". The lights were stopped: {dose['stopped']}"
    return text[:1024]
