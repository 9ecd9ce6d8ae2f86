"""The codes the unit writes are stated once (device.outbox.codes), and those that go into DICOM fit it."""
from __future__ import annotations

from device.outbox import codes, dicom


def test_the_dicom_objects_and_the_codes_module_name_one_local_scheme():
    assert dicom.LOCAL_SCHEME == codes.LOCAL_DESIGNATOR
    assert codes.DESIGNATORS[codes.LOCAL] == dicom.LOCAL_SCHEME


def test_the_verdict_codes_fit_dicoms_code_value():
    for code in (codes.VERDICT_REPORT, codes.VERDICT, codes.GRADER_NOTE, *codes.VERDICT_VALUES.values()):
        assert len(code.code) <= 16, code
        concept = code.dicom()
        assert (concept.value, concept.scheme_designator) == (code.code, codes.LOCAL_DESIGNATOR)


def test_no_two_concepts_of_the_local_system_share_a_code():
    local = [value for value in vars(codes).values() if isinstance(value, codes.Code) and value.system == codes.LOCAL]
    local += [c for table in (codes.REFERRAL_VALUES, codes.VERDICT_VALUES) for c in table.values()]
    assert len({c.code for c in local}) == len({(c.code, c.display) for c in local})
