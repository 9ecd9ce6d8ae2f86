"""The DICOM objects of one screened eye: deterministic, conformant, and faithful to the visit."""
from __future__ import annotations

import io
import re
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import cv2
import highdicom as hd
import numpy as np
import pytest
from highdicom._standard_utils import check_required_attributes, get_iod_module_map, get_sop_class_iod_map
from PIL import Image
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from device.outbox.dicom import OP_IMAGE, EyeStudy, build_datasets, study_uids

VISIT = "6f1c2b7e-9d0a-4c3e-8a51-2f4b7d9e0c13"
UID_RULE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def to_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def reread(ds: Dataset) -> Dataset:
    return dcmread(io.BytesIO(to_bytes(ds)))


@pytest.fixture(scope="module")
def photo(refuge_photo):
    """A real REFUGE photo with its experts' disc and cup (0 = cup, 128 = rim, 255 = background)."""
    labels = cv2.imread(str(refuge_photo.parent.parent / "masks" / f"{refuge_photo.stem}.png"), cv2.IMREAD_GRAYSCALE)
    return refuge_photo.read_bytes(), labels < 255, labels == 0


def eye_study(photo, eye="right", **changes) -> EyeStudy:
    jpeg, disc, cup = photo
    study = EyeStudy(
        visit_uuid=VISIT, eye=eye, device_id="GSE-0042", patient_id="KSI-2024-0117",
        patient_name="Ama Mensah", year_of_birth=1961, sex="female",
        captured_at=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc), photo_jpeg=jpeg,
        disc_mask=disc, cup_mask=cup,
        result={"gradable": True, "vcdr": 0.7312, "glaucoma_probability": 0.6841, "referral": "refer",
                "referral_reasons": ["Glaucoma risk 68% is at or above the referral level of 50%."],
                "measurements": {"hcdr": 0.6611, "area_cdr": 0.4902},
                "model_versions": {"mtl_unet": "2024.06-int8", "referral": "fitted on refuge-val split 3"}})
    return replace(study, **changes)


@pytest.fixture(scope="module")
def datasets(photo):
    return build_datasets(eye_study(photo))


def content_items(ds: Dataset):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def concept(item: Dataset) -> tuple[str, str]:
    code = item.ConceptNameCodeSequence[0]
    return code.CodingSchemeDesignator, code.CodeValue


def test_uids_are_deterministic_valid_and_distinct():
    right, left = study_uids(VISIT, "right"), study_uids(VISIT, "left")
    assert right == study_uids(VISIT, "right")
    every = list(right.values()) + list(left.values())
    assert len(set(every)) == len(every) == 14
    for uid in every:
        assert uid.startswith("2.25.") and len(uid) <= 64 and UID_RULE.match(uid), uid
    other_visit = study_uids(str(uuid.UUID(int=uuid.UUID(VISIT).int + 1)), "right")
    assert not set(other_visit.values()) & set(every)


def test_bad_visit_or_eye_is_refused_in_plain_words():
    with pytest.raises(ValueError, match="not a UUID"):
        study_uids("visit-17", "right")
    with pytest.raises(ValueError, match="'right' or 'left'"):
        study_uids(VISIT, "OD")


def test_the_same_visit_always_encodes_to_the_same_bytes(photo, datasets):
    again = build_datasets(eye_study(photo))
    assert [to_bytes(ds) for ds in again] == [to_bytes(ds) for ds in datasets]
    later_capture = build_datasets(eye_study(photo, captured_at=datetime(2024, 5, 6, 7, 8, 10, tzinfo=timezone.utc)))
    assert to_bytes(later_capture[0]) != to_bytes(datasets[0])
    assert [ds.SOPInstanceUID for ds in datasets] == [study_uids(VISIT, "right")[k] for k in ("photo", "seg", "sr")]
    assert {ds.StudyInstanceUID for ds in datasets} == {study_uids(VISIT, "right")["study"]}


@pytest.mark.parametrize("eye, laterality", [("right", "R"), ("left", "L")])
def test_photo_is_an_ophthalmic_photography_image_holding_the_camera_jpeg(photo, eye, laterality):
    op = reread(build_datasets(eye_study(photo, eye=eye))[0])
    # Every Type 1 and 2 attribute of the IOD's mandatory modules, from highdicom's tables of PS3.3.
    iod = get_sop_class_iod_map()[OP_IMAGE]
    for module in get_iod_module_map()[iod]:
        if module["usage"] == "M":
            check_required_attributes(op, module["key"])
    assert op.SOPClassUID == OP_IMAGE and op.Modality == "OP"
    assert op.ImageLaterality == laterality
    assert op.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert op.AcquisitionDeviceTypeCodeSequence[0].CodeValue == "409898007"  # fundus camera
    assert op.Manufacturer == "GlaucoScreen Edge" and op.DeviceSerialNumber == "GSE-0042"
    assert op.AcquisitionDateTime.startswith("20240506070809.123456")
    jpeg = photo[0]
    frames = list(generate_frames(op.PixelData, number_of_frames=1))
    assert frames[0].rstrip(b"\x00") == jpeg.rstrip(b"\x00")  # the camera's bytes, untouched
    image = Image.open(io.BytesIO(jpeg))
    assert (op.Columns, op.Rows) == image.size and op.SamplesPerPixel == 3
    subsampled = len({(h, v) for _, h, v, _ in image.layer}) > 1
    assert op.PhotometricInterpretation == ("YBR_FULL_422" if subsampled else "YBR_FULL")
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.abs(op.pixel_array.astype(int) - expected).mean() < 2.0


def test_patient_and_visit_identifiers(datasets, photo):
    for ds in datasets:
        assert ds.PatientID == "KSI-2024-0117" and str(ds.PatientName) == "Ama Mensah^"
        assert ds.PatientBirthDate == "19610101" and ds.PatientSex == "F" and ds.PatientAge == "063Y"
        assert ds.AdmissionID == VISIT and ds.StudyDate == "20240506"
    unknown = build_datasets(eye_study(photo, patient_name=None, year_of_birth=None, sex=None))[0]
    assert unknown.PatientName == "" and unknown.PatientBirthDate == "" and unknown.PatientSex == ""
    assert "PatientAge" not in unknown
    with pytest.raises(ValueError, match="sex 'X'"):
        build_datasets(eye_study(photo, sex="X"))
    with pytest.raises(ValueError, match="patient ID"):
        build_datasets(eye_study(photo, patient_id=" "))


def test_capture_time_in_another_zone_is_stored_as_utc(photo):
    nairobi = timezone(timedelta(hours=3))
    op = build_datasets(eye_study(photo, captured_at=datetime(2024, 5, 6, 10, 8, 9, 123456, tzinfo=nairobi)))[0]
    assert (op.StudyDate, op.StudyTime, op.TimezoneOffsetFromUTC) == ("20240506", "070809.123456", "+0000")


def test_a_progressive_jpeg_is_stored_as_baseline(photo):
    rgb = cv2.imdecode(np.frombuffer(photo[0], np.uint8), cv2.IMREAD_COLOR)
    ok, progressive = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok and Image.open(io.BytesIO(progressive.tobytes())).info.get("progressive")
    op = reread(build_datasets(eye_study(photo, photo_jpeg=progressive.tobytes()))[0])
    frame = next(generate_frames(op.PixelData, number_of_frames=1))
    assert not Image.open(io.BytesIO(frame)).info.get("progressive")
    assert np.abs(op.pixel_array.astype(int) - rgb[..., ::-1]).mean() < 3.0


def test_not_a_jpeg_or_a_truncated_one_is_refused(photo):
    ok, png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="not a JPEG"):
        build_datasets(eye_study(photo, photo_jpeg=png.tobytes()))
    with pytest.raises(ValueError, match="truncated"):
        build_datasets(eye_study(photo, photo_jpeg=photo[0][: len(photo[0]) // 2]))


def test_calibrated_pixel_spacing_goes_on_the_photo(photo):
    op, seg, _ = build_datasets(eye_study(photo, pixel_spacing_mm=0.0123))
    assert [float(v) for v in op.PixelSpacing] == [0.0123, 0.0123]
    assert "PixelSpacing" not in build_datasets(eye_study(photo))[0]
    readable = hd.seg.Segmentation.from_dataset(reread(seg))
    assert readable.get_pixels_by_source_instance([op.SOPInstanceUID], segment_numbers=[1]).any()


def test_segmentation_gives_back_the_disc_and_cup_masks(datasets, photo):
    _, disc, cup = photo
    seg = hd.seg.Segmentation.from_dataset(reread(datasets[1]))
    assert seg.SegmentationType == "BINARY"
    op_uid = datasets[0].SOPInstanceUID
    pixels = seg.get_pixels_by_source_instance([op_uid], segment_numbers=[1, 2], combine_segments=False)
    assert pixels.shape == (1, *disc.shape, 2)
    assert np.array_equal(pixels[0, ..., 0].astype(bool), disc)
    assert np.array_equal(pixels[0, ..., 1].astype(bool), cup)
    labels = {s.SegmentNumber: (s.SegmentLabel, s.SegmentedPropertyTypeCodeSequence[0].CodeValue)
              for s in seg.SegmentSequence}
    assert labels[1] == ("Optic disc", "81016008") and labels[2][0] == "Optic cup"
    reference = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (OP_IMAGE, op_uid)
    assert seg.StudyInstanceUID == datasets[0].StudyInstanceUID


def test_masks_of_another_size_are_refused(photo):
    small = np.zeros((100, 100), bool)
    with pytest.raises(ValueError, match="photo's own pixel grid"):
        build_datasets(eye_study(photo, disc_mask=small, cup_mask=small))
    with pytest.raises(ValueError, match="both disc and cup"):
        build_datasets(eye_study(photo, cup_mask=None))


def test_report_carries_vcdr_probability_referral_reasons_and_versions(datasets):
    sr = reread(datasets[2])
    hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom can read it back as a TID 1500 report
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    items = list(content_items(sr))
    numbers = {concept(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
    assert numbers[("DCM", "131257")] == pytest.approx(0.7312)  # cup to disc ratio vertical
    assert numbers[("DCM", "122157")] == pytest.approx(0.6841)  # probability (of glaucoma)
    referral = [i for i in items if i.ValueType == "CODE" and concept(i) == ("99GLSCR", "referral")]
    assert [r.ConceptCodeSequence[0].CodeValue for r in referral] == ["refer"]
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert "Glaucoma risk 68% is at or above the referral level of 50%." in texts
    assert "mtl_unet: 2024.06-int8" in texts
    segments = [i for i in items if i.ValueType == "IMAGE" and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]]
    assert segments and segments[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == datasets[1].SOPInstanceUID
    evidence = {ref.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
    assert evidence == {datasets[0].SOPInstanceUID, datasets[1].SOPInstanceUID}
    assert sr.PreliminaryFlag == "PRELIMINARY" and sr.VerificationFlag == "UNVERIFIED"


def test_an_ungradable_eye_is_a_photo_and_a_rescreen_report(photo):
    result = {"gradable": False, "vcdr": None, "glaucoma_probability": None, "referral": "rescreen",
              "referral_reasons": ["The photo is out of focus: hold still."], "model_versions": {"mtl_unet": "1"}}
    out = build_datasets(eye_study(photo, disc_mask=None, cup_mask=None, result=result))
    assert [ds.Modality for ds in out] == ["OP", "SR"]
    items = list(content_items(out[1]))
    measured = {concept(i) for i in items if i.ValueType == "NUM"}
    assert not measured & {("DCM", "131257"), ("DCM", "122157")}
    codes = {i.ConceptCodeSequence[0].CodeValue for i in items if i.ValueType == "CODE"}
    assert "rescreen" in codes
    assert "The photo is out of focus: hold still." in {i.TextValue for i in items if i.ValueType == "TEXT"}
    with pytest.raises(ValueError, match="refer, rescreen or normal"):
        build_datasets(eye_study(photo, result={**result, "referral": "maybe"}))


def test_the_report_says_how_the_eye_changed_since_its_first_visit(photo):
    progression = {"verdict": "progressing", "message": "The optic disc has changed since the first visit: the eye "
                   "doctor should compare the photos.", "compared_with": "2021-05-06T07:08:09+00:00", "years": 3.0,
                   "vcdr_then": 0.52, "vcdr_now": 0.7312, "engine_probability": 0.41}
    study = eye_study(photo)
    sr = reread(build_datasets(replace(study, result={**study.result, "progression": progression}))[2])
    texts = {concept(i): i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"}
    said = texts[("99GLSCR", "progression")]
    assert said.startswith("The optic disc has changed") and "0.52 at 2021-05-06, 0.73 now (3.0 years)" in said
    assert "41%" in said


# one eye that changed beyond the noise, as the screening reports it (the reading centre's tests show it too)
PROGRESSING = {
    "verdict": "progressing", "message": "The optic disc has changed since the first visit: the eye doctor should "
    "compare the photos.", "compared_with": "2021-05-06T07:08:09+00:00", "years": 3.0, "vcdr_then": 0.5256,
    "vcdr_now": 0.7818, "exceeds_noise": True, "confidence": 0.95,
    "changes": [{"measure": "vcdr", "then": 0.5256, "now": 0.7818, "change": 0.2562, "noise_sd": 0.06, "limit": 0.0987,
                 "exceeds": True},
                {"measure": "rim_inferior", "then": 0.2046, "now": 0.1987, "change": -0.0059, "noise_sd": 0.03,
                 "limit": 0.0493, "exceeds": False}],
    "trend": {"measure": "vcdr", "visits": 3, "years": 3.0, "slope": 0.085, "low": 0.021, "high": 0.149,
              "confidence": 0.95, "worsening": True},
    "registration": {"aligned": True, "matches": 995, "correlation": 0.981, "overlap": 0.995, "scale": 0.9995,
                     "turn_deg": -0.02, "refusal": None, "matrix": [[1, 0, -4.9], [0, 1, 5.0]], "visits_aligned": 2,
                     "visits_tried": 2}}


def test_the_report_carries_the_change_measures_and_how_well_the_photos_lined_up(photo):
    progression = PROGRESSING
    study = eye_study(photo)
    sr = reread(build_datasets(replace(study, result={**study.result, "progression": progression}))[2])
    texts: dict[tuple[str, str], list[str]] = {}
    for i in content_items(sr):
        if i.ValueType == "TEXT":
            texts.setdefault(concept(i), []).append(i.TextValue)
    said = texts[("99GLSCR", "progression")][0]
    assert "measured together in today's frame" in said and "A change beyond photo-to-photo noise at 95% confidence" in said
    assert texts[("99GLSCR", "registration")] == [
        "Aligned: 995 matching points, vessel correlation 0.98, overlap 100%, scale 1.000, turn -0.0 degrees; "
        "2 of 2 earlier visits lined up"]
    vcdr, rim = texts[("99GLSCR", "disc-change")]
    assert vcdr.startswith("Cup-to-disc ratio (vertical): 0.526 then, 0.782 now, change +0.256; beyond the noise")
    assert "must exceed 0.099" in vcdr
    assert rim.startswith("Rim, inferior quarter (share of the disc)") and "within the noise" in rim
    assert texts[("99GLSCR", "disc-trend")] == [
        "Cup-to-disc ratio (vertical): +0.085 per year over 3 visits and 3.0 years (95% interval +0.021 to +0.149); worsening"]


def test_a_comparison_that_did_not_line_up_says_why(photo):
    progression = {"verdict": "not_aligned", "message": "The earlier photo of this eye could not be lined up with today's, "
                   "so change was not measured: the eye doctor should compare the photos.",
                   "compared_with": "2021-05-06T07:08:09+00:00", "years": 3.0, "vcdr_then": 0.5, "vcdr_now": 0.6,
                   "registration": {"aligned": False, "matches": 5, "correlation": None, "overlap": 0.0,
                                    "refusal": "too few points of the two photos match (5; 25 needed): they may not show "
                                               "the same eye, or one of them is blurred or badly lit"}}
    study = eye_study(photo)
    sr = reread(build_datasets(replace(study, result={**study.result, "progression": progression}))[2])
    texts = {concept(i): i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"}
    assert texts[("99GLSCR", "registration")].startswith("Not aligned: too few points of the two photos match (5;")
    assert ("99GLSCR", "disc-change") not in texts
    assert "beyond photo-to-photo noise" not in texts[("99GLSCR", "progression")]


def test_the_photo_and_report_say_which_calibration_corrected_it_and_the_light_the_eye_got(photo):
    from hardware.light_dose import EyeDose, LightLimits

    calibration = {"version": 4, "date": "2024-04-30T15:20:00+00:00", "module_serial": "GSO-0042"}
    dose = {**EyeDose(preview_s=12.0, preview_mj_cm2=0.9, flashes=3, flash_s=0.6, flash_mj_cm2=0.05,
                      peak_irradiance_mw_cm2=0.083).to_dict(), "limits": LightLimits().to_dict(), "stopped": None}
    photo_ds, *_, sr = [reread(ds) for ds in build_datasets(eye_study(photo, calibration=calibration, light_dose=dose))]
    assert list(photo_ds.ImageType) == ["DERIVED", "PRIMARY"]
    assert photo_ds.DerivationDescription == ("Corrected for dark level, flat field and white balance with optical "
                                              "calibration version 4 of 2024-04-30T15:20:00+00:00 (optic module GSO-0042)")
    assert photo_ds.DateOfLastCalibration == "20240430" and photo_ds.TimeOfLastCalibration.startswith("152000")
    texts = {concept(i): i.TextValue for i in content_items(sr) if i.ValueType == "TEXT"}
    assert texts[("99GLSCR", "calibration")] == photo_ds.DerivationDescription
    said = texts[("99GLSCR", "light-dose")]
    assert said.startswith("Preview 12.0 s, 0.9 mJ/cm2 (mean 0.075 mW/cm2); 3 flashes, 0.60 s, 0.05 mJ/cm2; in all 0.95 mJ/cm2")
    assert "0.22 mW/cm2 continuous, 50.0 mJ/cm2 per eye per visit" in said and "ISO 15004-2:2007" in said
    # a photo no calibration corrected is the sensor's own, and the report says it was not corrected
    plain_photo, *_, plain_sr = [reread(ds) for ds in build_datasets(eye_study(photo))]
    assert list(plain_photo.ImageType) == ["ORIGINAL", "PRIMARY"] and "DerivationDescription" not in plain_photo
    plain = {concept(i): i.TextValue for i in content_items(plain_sr) if i.ValueType == "TEXT"}
    assert plain[("99GLSCR", "calibration")].startswith("Not corrected") and ("99GLSCR", "light-dose") not in plain
