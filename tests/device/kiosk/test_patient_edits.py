"""An admin corrects a registration and merges two, through the kiosk's pages on the real unit in
simulation: each change is kept with who and when, a worker cannot make one, and the unit's visit log
holds the result."""
from __future__ import annotations

import random

from device.kiosk import create_app
from device.lab.sync_trials import add_visits, sample_eyes
from tests.device.kiosk.test_kiosk import PIN, csrf_of, sign_in, unit  # noqa: F401 (a fixture)


def _client(unit, user: str = "amina"):
    client = create_app(unit, secret_key=b"k" * 32, testing=True).test_client()
    assert sign_in(client, user, {"amina": PIN, "joseph": "1357"}[user]).status_code == 302
    return client


def _register(unit, identifier: str, name: str) -> None:
    unit.visits.add_patient(identifier, name=name, year_of_birth=1958, sex="M", consent=True)


def test_an_admin_corrects_a_patient_and_the_change_is_kept_with_who_and_when(unit):
    _register(unit, "ED-1", "Jon Smiht")
    client = _client(unit)
    page = client.get("/patients/ED-1").text
    assert 'id="edit-details"' in page
    form = client.get("/admin/patients/edit?patient=ED-1").text
    reply = client.post("/admin/patients/edit?patient=ED-1", data={
        "identifier": "ED-1A", "name": "John Smith", "year_of_birth": "1958", "sex": "M", "csrf_token": csrf_of(form)})
    assert reply.status_code == 302 and reply.headers["Location"].endswith("/patients/ED-1A")
    person = unit.visits.get_patient("ED-1A")
    assert person["name"] == "John Smith" and unit.visits.get_patient("ED-1") is None
    [edit] = unit.visits.patient_edits("ED-1A")
    assert edit["edited_by"] == "amina" and edit["action"] == "edit" and edit["edited_at"]
    assert edit["changes"] == {"identifier": ["ED-1", "ED-1A"], "name": ["Jon Smiht", "John Smith"]}
    history = client.get("/admin/patients/edit?patient=ED-1A").text
    assert 'name "Jon Smiht" to "John Smith"' in history and "amina" in history


def test_a_correction_that_cannot_be_sent_or_clashes_is_refused_in_words(unit):
    _register(unit, "ED-2", "Asha")
    _register(unit, "ED-3", "Asha B")
    client = _client(unit)
    token = csrf_of(client.get("/admin/patients/edit?patient=ED-2").text)
    for identifier, said in (("ED\\2", "cannot contain a backslash"), ("ED-3", "belongs to another registration")):
        reply = client.post("/admin/patients/edit?patient=ED-2", data={
            "identifier": identifier, "name": "Asha", "year_of_birth": "1958", "sex": "M", "csrf_token": token})
        assert reply.status_code == 422 and said in reply.text
    assert unit.visits.get_patient("ED-2")["name"] == "Asha" and unit.visits.patient_edits("ED-2") == []


def test_a_health_worker_cannot_edit_a_patient(unit):
    _register(unit, "ED-4", "Kwame")
    client = _client(unit, "joseph")
    assert 'id="edit-details"' not in client.get("/patients/ED-4").text
    assert client.get("/admin/patients/edit?patient=ED-4").status_code == 403
    token = csrf_of(client.get("/patients/ED-4").text)
    reply = client.post("/admin/patients/edit?patient=ED-4", data={
        "identifier": "ED-4", "name": "Someone Else", "year_of_birth": "1958", "sex": "M", "csrf_token": token})
    assert reply.status_code == 403 and unit.visits.get_patient("ED-4")["name"] == "Kwame"


def test_two_registrations_of_one_person_merge_into_one_with_every_visit(unit, shared_data):
    eyes = sample_eyes(shared_data, 2)
    rng = random.Random(7)
    [first] = add_visits(unit.visits, eyes, 1, rng)
    [second] = add_visits(unit.visits, eyes, 1, rng)
    keep = unit.visits.get_visit(first)["patient"]["identifier"]
    duplicate = unit.visits.get_visit(second)["patient"]["identifier"]
    client = _client(unit)
    token = csrf_of(client.get(f"/admin/patients/edit?patient={keep}").text)
    unconfirmed = client.post("/admin/patients/merge", data={"patient": keep, "duplicate": duplicate, "csrf_token": token},
                              follow_redirects=True)
    assert "Tick the box" in unconfirmed.text and unit.visits.get_patient(duplicate) is not None
    merged = client.post("/admin/patients/merge", data={"patient": keep, "duplicate": duplicate, "confirm": "yes",
                                                          "csrf_token": token}, follow_redirects=True)
    assert f"{duplicate} merged into {keep}: 1 visit moved." in merged.text
    assert unit.visits.get_patient(duplicate) is None
    assert {v["uuid"] for v in unit.visits.visits_for_patient(keep)} == {first, second}
    [edit] = unit.visits.patient_edits(keep)
    assert edit["action"] == "merge" and edit["changes"]["merged"]["identifier"] == duplicate
    assert edit["changes"]["visits_moved"] == 1 and edit["edited_by"] == "amina"
