"""An admin corrects a patient's registration or merges two registrations of one person. Every change
is kept with who made it and when (the visit log's edit history), and eyes the PACS could not take
because of the old details are sent again."""
from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext, ngettext

from device.kiosk import get_unit
from device.kiosk.errors import error_page
from device.kiosk.languages import known
from device.kiosk.patients import SEXES, check_details
from device.kiosk.security import admin_required
from device.kiosk.wording import said

bp = Blueprint("patient_edits", __name__, url_prefix="/admin/patients")


def _patient_or_404(identifier: str):
    person = get_unit().visits.get_patient(identifier)
    if person is None:
        return None, error_page(gettext("Patient not found"),
                                gettext("No patient with clinic number %(number)s is registered on this unit.", number=identifier),
                                [gettext("Check the number, or find the patient by name from the home page.")], 404)
    return person, None


def _queued_words(n: int) -> str:
    return "" if not n else " " + ngettext("%(num)d eye that could not be sent will be sent again.",
                                           "%(num)d eyes that could not be sent will be sent again.", n)


@bp.route("/edit", methods=["GET", "POST"])
@admin_required
def edit():
    identifier = request.args.get("patient", "")
    person, missing = _patient_or_404(identifier)
    if missing:
        return missing
    values = {"identifier": person["identifier"], "name": person["name"] or "",
              "year_of_birth": str(person["year_of_birth"] or ""), "sex": person["sex"] or "",
              "phone": person["phone"] or "", "address": person["address"] or "", "language": person.get("language") or ""}
    errors = {}
    if request.method == "POST":
        values, errors = check_details(request.form)
        taken = get_unit().visits.get_patient(values["identifier"]) if not errors else None
        if taken is not None and taken["id"] != person["id"]:
            errors["identifier"] = gettext("Clinic number %(number)s belongs to another registration: merge the two instead.",
                                           number=taken["identifier"])
        if not errors:
            try:
                done = get_unit().visits.edit_patient(
                    person["identifier"], by=session["user"], new_identifier=values["identifier"], name=values["name"],
                    year_of_birth=int(values["year_of_birth"]), sex=values["sex"], phone=values["phone"],
                    address=values["address"], language=known(request.form.get("language")))  # none sent: as it was
            except ValueError as exc:  # the visit log says it in English, as a clause
                reason = said(str(exc)) or ""
                errors["identifier"] = reason[:1].upper() + reason[1:] + "."
            else:
                if done["changes"]:
                    flash(gettext("Saved.") + _queued_words(done["requeued"]), "info")
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
        problem = (gettext("No patient with clinic number %(number)s is registered on this unit.", number=duplicate) if duplicate
                   else gettext("Give the clinic number of the other registration."))
    elif other["id"] == person["id"]:
        problem = gettext("That is this registration: give the clinic number of the other one.")
    elif request.form.get("confirm") != "yes":
        problem = gettext("Tick the box to confirm that both registrations are the same person.")
    if problem:
        flash(problem, "warning")
        return redirect(url_for("patient_edits.edit", patient=person["identifier"]))
    assert other is not None
    done = visits.merge_patients(person["identifier"], other["identifier"], by=session["user"])
    words = ngettext("%(other)s merged into %(kept)s: %(num)d visit moved.", "%(other)s merged into %(kept)s: %(num)d visits moved.",
                     done["visits_moved"], other=other["identifier"], kept=person["identifier"])
    if done["sent_under_old_identifier"]:
        words += " " + ngettext("%(num)d eye was already sent to the PACS under %(other)s; ask the PACS administrator to merge "
                                "it there too.",
                                "%(num)d eyes were already sent to the PACS under %(other)s; ask the PACS administrator to merge "
                                "them there too.", done["sent_under_old_identifier"], other=other["identifier"])
    flash(words + _queued_words(done["requeued"]), "info")
    return redirect(url_for("patients.patient", identifier=person["identifier"]))
