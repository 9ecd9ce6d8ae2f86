"""The reading centre's review page shows what the unit measured of an eye's change since its first visit, from
the unit's report in a real Orthanc: how well the earlier photo lined up with today's, each measure's change
against the noise it had to exceed, and the trend; and why, where the photos did not line up."""
from __future__ import annotations

import html
from dataclasses import replace

import pytest

from device.outbox.dicom import build_datasets, study_uids
from device.outbox.dicomweb import STORED, DicomWebClient
from tests.device.outbox.test_dicom import PROGRESSING as CHANGED
from tests.device.outbox.test_dicom import VISIT, eye_study, photo  # noqa: F401  # a fixture, used by name
from tests.device.reading_centre.test_reading_centre import grader_signs_in, reading_centre  # noqa: F401  # a fixture

pytest_plugins = ["tests.orthanc"]

NOT_LINED_UP = {
    "verdict": "not_aligned", "message": "The earlier photo of this eye could not be lined up with today's, so change "
    "was not measured: the eye doctor should compare the photos.", "compared_with": "2021-05-06T07:08:09+00:00",
    "years": 3.0, "vcdr_then": 0.5, "vcdr_now": 0.6,
    "registration": {"aligned": False, "matches": 5, "correlation": None, "overlap": 0.0,
                     "refusal": "too few points of the two photos match (5; 25 needed): they may not show the same eye, "
                                "or one of them is blurred or badly lit"}}


def _store(orthanc, photo, eye: str, progression: dict | None) -> str:
    study = eye_study(photo, eye=eye)
    result = {**study.result, **({"progression": progression} if progression else {})}
    client = DicomWebClient(orthanc.url, username=orthanc.username, password=orthanc.password, timeout=10)
    try:
        assert client.store(build_datasets(replace(study, result=result))).outcome == STORED
    finally:
        client.close()
    return study_uids(VISIT, eye)["study"]


def _section(page: str) -> str:
    start = page.index('id="unit-progression"')
    return html.unescape(page[start:page.index("</section>", start)])


@pytest.mark.orthanc
def test_the_grader_sees_the_change_against_its_noise_and_how_well_the_photos_lined_up(orthanc, photo, reading_centre):
    changed = _store(orthanc, photo, "right", CHANGED)
    refused = _store(orthanc, photo, "left", NOT_LINED_UP)
    grader = reading_centre.test_client()
    assert grader_signs_in(grader).status_code == 302

    shown = _section(grader.get(f"/studies/{changed}").text)
    assert "Change since the first visit" in shown
    assert "The optic disc has changed since the first visit" in shown and "0.53 at 2021-05-06, 0.78 now" in shown
    assert ("Aligned: 995 matching points, vessel correlation 0.98, overlap 100%, scale 1.000, turn -0.0 degrees; "
            "2 of 2 earlier visits lined up") in shown
    assert "Cup-to-disc ratio (vertical): 0.526 then, 0.782 now, change +0.256; beyond the noise" in shown
    assert "Rim, inferior quarter (share of the disc): 0.205 then, 0.199 now, change -0.006; within the noise" in shown
    assert "+0.085 per year over 3 visits and 3.0 years (95% interval +0.021 to +0.149); worsening" in shown

    in_hindi = _section(grader.get(f"/studies/{changed}?lang=hi").text)
    assert "पहली जाँच के बाद से बदलाव" in in_hindi and "Change since the first visit" not in in_hindi
    # what the unit wrote stays as it wrote it, marked as English for the reader's browser and screen reader
    assert '<dd lang="en">Cup-to-disc ratio (vertical): 0.526 then' in in_hindi

    not_lined_up = _section(grader.get(f"/studies/{refused}").text)
    assert "Not aligned: too few points of the two photos match (5; 25 needed)" in not_lined_up
    assert "beyond the noise" not in not_lined_up and "per year" not in not_lined_up


@pytest.mark.orthanc
def test_an_eye_never_compared_has_no_change_section(orthanc, photo, reading_centre):
    first = _store(orthanc, photo, "right", None)
    grader = reading_centre.test_client()
    assert grader_signs_in(grader).status_code == 302
    page = grader.get(f"/studies/{first}")
    assert page.status_code == 200 and 'id="unit-progression"' not in page.text
