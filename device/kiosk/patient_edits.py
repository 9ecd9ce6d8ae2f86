"""An admin corrects a patient's registration or merges two registrations of one person. Every change
is kept with who made it and when (the visit log's edit history), and eyes the PACS could not take
because of the old details are sent again."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for

from device.kiosk import get_unit
from device.kiosk.errors import error_page
from device.kiosk.patients import SEXES, check_details
from device.kiosk.security import admin_required

bp = Blueprint("patient_edits", __name__, url_prefix="/admin/patients")


def _patient_or_404(identifier: str):
    person = get_unit().visits.get_patient(identifier)
    if person is None:
        return None, error_page("Patient not found", f"No patient with clinic number {identifier} is registered on this unit.",
                                ["Check the number, or find the patient by name from the home page."], 404)
    return person, None


def _queued_words(n: int) -> str:
    return "" if not n else f" {n} eye{'s' if n != 1 else ''} that could not be sent will be sent again."


@bp.route("/edit", methods=["GET", "POST"])
@admin_required
def edit():
    identifier = request.args.get("patient", "")
    person, missing = _patient_or_404(identifier)
    if missing:
        return missing
    values = {"identifier": person["identifier"], "name": person["name"] or "",
              "year_of_birth": str(person["year_of_birth"] or ""), "sex": person["sex"] or "",
              "phone": person["phone"] or "", "address": person["address"] or ""}
    errors = {}
    if request.method == "POST":
        values, errors = check_details(request.form)
        if not errors:
            try:
                done = get_unit().visits.edit_patient(
                    person["identifier"], by=session["user"], new_identifier=values["identifier"], name=values["name"],
                    year_of_birth=int(values["year_of_birth"]), sex=values["sex"], phone=values["phone"],
                    address=values["address"])
            except ValueError as exc:
                errors["identifier"] = str(exc)[0].upper() + str(exc)[1:] + "."
            else:
                if done["changes"]:
                    flash("Saved." + _queued_words(done["requeued"]), "info")
                return redirect(url_for("patients.patient", identifier=values["identifier"]))
    history = get_unit().visits.patient_edits(person["identifier"])
    return render_template("patient_edit.html", patient=person, values=values, errors=errors, sexes=SEXES,
                           history=history), 422 if errors else 200


@bp.post("/merge")
@admin_required
def merge():
    keep = request.form.get("patient", "")
    person, missing = _patient_or_404(keep)
    if missing:
        return missing
    duplicate = (request.form.get("duplicate") or "").strip()
    visits = get_unit().visits
    other = visits.get_patient(duplicate) if duplicate else None
    problem = None
    if other is None:
        problem = f"No patient with clinic number {duplicate or '(none given)'} is registered on this unit."
    elif other["id"] == person["id"]:
        problem = "That is this registration: give the clinic number of the other one."
    elif request.form.get("confirm") != "yes":
        problem = "Tick the box to confirm that both registrations are the same person."
    if problem:
        flash(problem, "warning")
        return redirect(url_for("patient_edits.edit", patient=person["identifier"]))
    assert other is not None
    done = visits.merge_patients(person["identifier"], other["identifier"], by=session["user"])
    said = f"{other['identifier']} merged into {person['identifier']}: {done['visits_moved']} visit(s) moved."
    if done["sent_under_old_identifier"]:
        said += (f" {done['sent_under_old_identifier']} eye(s) were already sent to the PACS under "
                 f"{other['identifier']}; ask the PACS administrator to merge them there too.")
    flash(said + _queued_words(done["requeued"]), "info")
    return redirect(url_for("patients.patient", identifier=person["identifier"]))
