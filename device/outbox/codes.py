"""Every code the unit and the reading centre write outside DICOM's own templates, in one place: the standard
code where SNOMED CT, LOINC or DICOM has one for exactly the concept, and the unit's own code system where none
does. The FHIR bundles (`device.outbox.fhir`) and the reading centre's verdict (`device.outbox.verdicts`) take
their codes from here, and the DICOM objects of a visit carry the same own codes under the coding scheme
designator `LOCAL_DESIGNATOR` (`device.outbox.dicom.LOCAL_SCHEME`).

Why some concepts have no standard code here:
- vCDR: LOINC's cup-disc ratio terms are per eye and "by ophthalmoscopy" (an examiner's estimate), not a
  vertical ratio measured on a photo; DICOM's 131257 "Cup to disc ratio vertical" (PS3.16 CID 4281) is exactly
  it, and FHIR names DICOM's codes by the system below.
- disc and cup diameters in the photo's pixels, the glaucoma probability, the unit's referral and the grader's
  verdict: no terminology has them as the unit measures and decides them.
The own code system is named by an OID under 2.25 (a UUID turned into an OID, ISO/IEC 9834-8), which needs no
registry and is never anyone else's.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DICOM_UID = "urn:dicom:uid"  # FHIR's system for a DICOM UID written as urn:oid:...

_NAMESPACE = uuid.UUID("3f1c1f7e-5d0b-4c39-9a7c-2b6f0f6c8e21")  # this project's FHIR names; never changes


def _oid(name: str) -> str:
    return "urn:oid:2.25." + str(uuid.uuid5(_NAMESPACE, name).int)


LOCAL = _oid("code-system")           # the unit's own codes
LOCAL_DESIGNATOR = "99GLSCR"          # the same codes in DICOM (PS3.3 8.2: a private scheme starts with 99)
VISIT_EYE = _oid("visit-eye")         # identifier system: one eye of one visit ("<visit uuid>/<eye>")
MODEL_SET = _oid("model-set")         # identifier system: one unit running one set of model versions
DESIGNATORS = {SNOMED: "SCT", LOINC: "LN", DCM: "DCM", UCUM: "UCUM", LOCAL: LOCAL_DESIGNATOR}


def patient_numbers(device_id: str) -> str:
    """The identifier system of the clinic numbers a unit registers: one per unit, because two clinics may both
    have a patient 'P-001', and an EHR must not make them one person."""
    return _oid(f"patient-number/{device_id}")


@dataclass(frozen=True)
class Code:
    system: str
    code: str
    display: str

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}

    def concept(self, text: str | None = None) -> dict[str, Any]:
        """A FHIR CodeableConcept of this one coding."""
        return {"coding": [self.coding()], "text": text or self.display}

    def dicom(self) -> Any:
        """The same code as a DICOM coded concept (highdicom's)."""
        import highdicom as hd

        return hd.sr.CodedConcept(self.code, DESIGNATORS[self.system], self.display)


# --- Standard codes ----------------------------------------------------------------------------
# SNOMED CT; the eyes as HL7's eyecare IG binds them (EyecareTargetSiteCodes: 362502000, 362503005)
EYE_SITE = {"right": Code(SNOMED, "362502000", "Entire right eye"),
            "left": Code(SNOMED, "362503005", "Entire left eye")}
OPTIC_DISC = Code(SNOMED, "81016008", "Optic disc structure")  # PS3.16, pydicom codes.SCT.OpticDiscStructure
SCREENING = Code(SNOMED, "360156006", "Screening")            # PS3.16 CID 4256, codes.SCT.Screening
FUNDUS_CAMERA = Code(SNOMED, "409898007", "Fundus camera")     # PS3.16 CID 4202, codes.SCT.FundusCamera
VCDR = Code(DCM, "131257", "Cup to disc ratio vertical")       # PS3.16 CID 4281
OPHTHALMIC_PHOTOGRAPHY = Code(DCM, "OP", "Ophthalmic Photography")  # the modality, PS3.16 CID 29
IMAGING = Code(OBSERVATION_CATEGORY, "imaging", "Imaging")
RATIO_UNIT = Code(UCUM, "1", "ratio")
PIXELS_UNIT = Code(UCUM, "{pixels}", "pixels")  # UCUM: an annotation on the unity, the photo's own pixels
PROBABILITY_UNIT = Code(UCUM, "1", "probability")

# --- The unit's own codes ----------------------------------------------------------------------
SCREENING_REPORT = Code(LOCAL, "glaucoma-screening", "Glaucoma screening of one eye by fundus photo")
DISC_DIAMETERS = Code(LOCAL, "disc-diameters", "Optic disc diameters in the photo's pixels")
CUP_DIAMETERS = Code(LOCAL, "cup-diameters", "Optic cup diameters in the photo's pixels")
VERTICAL_DIAMETER = Code(LOCAL, "vertical-diameter", "Vertical diameter")
HORIZONTAL_DIAMETER = Code(LOCAL, "horizontal-diameter", "Horizontal diameter")
GLAUCOMA_PROBABILITY = Code(LOCAL, "glaucoma-probability", "Glaucoma probability from the screening models")
REFERRAL = Code(LOCAL, "referral", "Referral decision")
REFERRAL_VALUES = {
    "refer": Code(LOCAL, "refer", "Refer to an eye doctor"),
    "rescreen": Code(LOCAL, "rescreen", "Take the photo again"),
    "normal": Code(LOCAL, "normal", "No glaucoma signs seen"),
}

# The reading centre's verdict on one eye: what the grader decides, and what it asks of the patient. These go
# into DICOM, whose Code Value holds 16 characters (a longer one moves to Long Code Value, which fewer PACS read).
VERDICT_REPORT = Code(LOCAL, "rc-verdict", "Reading centre verdict")
VERDICT = Code(LOCAL, "verdict", "Verdict")
GRADER_NOTE = Code(LOCAL, "grader-note", "Grader's note")
VERDICT_VALUES = {
    "urgent": Code(LOCAL, "rc-urgent", "Urgent referral"),
    "refer": Code(LOCAL, "rc-refer", "Referral"),
    "routine": Code(LOCAL, "rc-routine", "Routine: no glaucoma signs"),
    "retake": Code(LOCAL, "rc-retake", "Ungradable: take the photo again"),
}
