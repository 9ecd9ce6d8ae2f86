"""Patients: register a new one (and start their screening), find one, and a patient's own page with
their visits and each eye's cup-to-disc ratio over time."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, redirect, render_template, request, session, url_for

from device.kiosk import get_unit
from device.kiosk.charts import vcdr_chart
from device.kiosk.errors import error_page
from device.kiosk.outcome import visit_outcome
from device.visits.visitlog import EYES, MAX_ADDRESS, MAX_PHONE

bp = Blueprint("patients", __name__)

MAX_IDENTIFIER = 40
MAX_NAME = 100
SEXES = {"F": "Female", "M": "Male", "O": "Other"}


def check_details(form) -> tuple[dict, dict[str, str]]:
    """The entered patient details, cleaned, and a message per field that is not right (empty when all are)."""
    values = {k: (form.get(k) or "").strip() for k in ("identifier", "name", "year_of_birth", "sex", "phone", "address")}
    errors = {}
    if not values["identifier"]:
        errors["identifier"] = "Enter the patient's clinic number."
    elif len(values["identifier"]) > MAX_IDENTIFIER:
        errors["identifier"] = f"The clinic number is at most {MAX_IDENTIFIER} characters."
    elif "\\" in values["identifier"] or not values["identifier"].isprintable():
        errors["identifier"] = "The clinic number cannot contain a backslash or invisible characters."
    if not values["name"]:
        errors["name"] = "Enter the patient's name."
    elif len(values["name"]) > MAX_NAME:
        errors["name"] = f"The name is at most {MAX_NAME} characters."
    this_year = dt.date.today().year
    year = values["year_of_birth"]
    if not (year.isascii() and year.isdigit() and 1900 <= int(year) <= this_year):
        errors["year_of_birth"] = f"Enter the year of birth as four digits, from 1900 to {this_year}."
    if values["sex"] not in SEXES:
        errors["sex"] = "Choose female, male or other."
    if len(values["phone"]) > MAX_PHONE or not all(c.isdigit() or c in " +-()" for c in values["phone"]):
        errors["phone"] = f"Enter the phone number with digits only (at most {MAX_PHONE}), or leave it empty."
    if len(values["address"]) > MAX_ADDRESS:
        errors["address"] = f"The village or address is at most {MAX_ADDRESS} characters."
    return values, errors


def check_registration(form) -> tuple[dict, dict[str, str]]:
    """The details, and the patient's consent, without which no photo is taken."""
    values, errors = check_details(form)
    values["consent"] = form.get("consent") == "yes"
    if not values["consent"]:
        errors["consent"] = "The patient must agree to the screening before photos are taken."
    return values, errors


@bp.route("/patients/new", methods=["GET", "POST"])
def register():
    values, errors = {"consent": False}, {}
    existing = None
    if request.method == "POST":
        values, errors = check_registration(request.form)
        unit = get_unit()
        if not errors:
            try:
                unit.visits.add_patient(values["identifier"], name=values["name"], year_of_birth=int(values["year_of_birth"]),
                                        sex=values["sex"], consent=True, phone=values["phone"], address=values["address"])
            except ValueError:
                existing = unit.visits.get_patient(values["identifier"])
                if existing is None:
                    raise
                errors["identifier"] = f"A patient with clinic number {existing['identifier']} is already registered."
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
        return error_page("Patient not found", f"No patient with clinic number {identifier} is registered on this unit.",
                          ["Check the number, or find the patient by name from the home page."], 404)
    history = [(v, visit_outcome(v)) for v in visits.visits_for_patient(person["identifier"])]
    charts = {eye: vcdr_chart(visits.eye_history(person["identifier"], eye)) for eye in EYES}
    return render_template("patient.html", patient=person, history=history, charts=charts, sexes=SEXES)
