"""Patients: register a new one (and start their screening), find one, and a patient's own page with
their visits and each eye's cup-to-disc ratio over time. A patient has a language of their own, in which
their slip is printed (the worker's, unless chosen otherwise at registration)."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, redirect, render_template, request, session, url_for
from flask_babel import gettext, lazy_gettext

from device.kiosk import get_unit
from device.kiosk.charts import vcdr_chart
from device.kiosk.comparison import latest_comparisons
from device.kiosk.errors import error_page
from device.kiosk.languages import current_language, known
from device.kiosk.outcome import visit_outcome
from device.visits.visitlog import EYES, MAX_ADDRESS, MAX_PHONE

bp = Blueprint("patients", __name__)

MAX_IDENTIFIER = 40
MAX_NAME = 100
SEXES = {"F": lazy_gettext("Female"), "M": lazy_gettext("Male"), "O": lazy_gettext("Other")}


def check_details(form) -> tuple[dict, dict[str, str]]:
    """The entered patient details, cleaned, and a message per field that is not right (empty when all are)."""
    values = {k: (form.get(k) or "").strip() for k in ("identifier", "name", "year_of_birth", "sex", "phone", "address")}
    errors = {}
    if not values["identifier"]:
        errors["identifier"] = gettext("Enter the patient's clinic number.")
    elif len(values["identifier"]) > MAX_IDENTIFIER:
        errors["identifier"] = gettext("The clinic number is at most %(num)d characters.", num=MAX_IDENTIFIER)
    elif "\\" in values["identifier"] or not values["identifier"].isprintable():
        errors["identifier"] = gettext("The clinic number cannot contain a backslash or invisible characters.")
    if not values["name"]:
        errors["name"] = gettext("Enter the patient's name.")
    elif len(values["name"]) > MAX_NAME:
        errors["name"] = gettext("The name is at most %(num)d characters.", num=MAX_NAME)
    this_year = dt.date.today().year
    year = values["year_of_birth"]
    if not (year.isascii() and year.isdigit() and 1900 <= int(year) <= this_year):
        errors["year_of_birth"] = gettext("Enter the year of birth as four digits, from 1900 to %(year)d.", year=this_year)
    if values["sex"] not in SEXES:
        errors["sex"] = gettext("Choose female, male or other.")
    if len(values["phone"]) > MAX_PHONE or not all(c.isdigit() or c in " +-()" for c in values["phone"]):
        errors["phone"] = gettext("Enter the phone number with digits only (at most %(num)d), or leave it empty.", num=MAX_PHONE)
    if len(values["address"]) > MAX_ADDRESS:
        errors["address"] = gettext("The village or address is at most %(num)d characters.", num=MAX_ADDRESS)
    # the language the patient's slip is printed in: one of the kiosk's, else the worker's
    values["language"] = known(form.get("language")) or current_language()
    return values, errors


def check_registration(form) -> tuple[dict, dict[str, str]]:
    """The details, and the patient's consent, without which no photo is taken."""
    values, errors = check_details(form)
    values["consent"] = form.get("consent") == "yes"
    if not values["consent"]:
        errors["consent"] = gettext("The patient must agree to the screening before photos are taken.")
    return values, errors


@bp.route("/patients/new", methods=["GET", "POST"])
def register():
    values, errors = {"consent": False, "language": current_language()}, {}
    existing = None
    if request.method == "POST":
        values, errors = check_registration(request.form)
        unit = get_unit()
        if not errors:
            try:
                unit.visits.add_patient(values["identifier"], name=values["name"], year_of_birth=int(values["year_of_birth"]),
                                        sex=values["sex"], consent=True, phone=values["phone"], address=values["address"],
                                        language=values["language"])
            except ValueError:
                existing = unit.visits.get_patient(values["identifier"])
                if existing is None:
                    raise
                errors["identifier"] = gettext("A patient with clinic number %(number)s is already registered.",
                                               number=existing["identifier"])
            else:
                visit_uuid = unit.visits.start_visit(values["identifier"], operator=session["user"],
                                                     device_id=unit.config.device_id)
                return redirect(url_for("screening.capture", visit_uuid=visit_uuid, eye=EYES[0]))
    return render_template("register.html", values=values, errors=errors, existing=existing,
                           sexes=SEXES), 422 if errors else 200


@bp.get("/patients")
def find():
    query = request.args.get("q", "").strip()
    found = get_unit().visits.find_patients(query, limit=30) if query else []
    return render_template("find.html", query=query, found=found)


@bp.get("/patients/<path:identifier>")
def patient(identifier: str):
    visits = get_unit().visits
    person = visits.get_patient(identifier)
    if person is None:
        return error_page(gettext("Patient not found"),
                          gettext("No patient with clinic number %(number)s is registered on this unit.", number=identifier),
                          [gettext("Check the number, or find the patient by name from the home page.")], 404)
    history = [(v, visit_outcome(v)) for v in visits.visits_for_patient(person["identifier"])]
    charts = {eye: vcdr_chart(visits.eye_history(person["identifier"], eye)) for eye in EYES}
    return render_template("patient.html", patient=person, history=history, charts=charts, sexes=SEXES,
                           comparisons=latest_comparisons(history))
