"""The Referred list: every referred visit with the day the patient should have gone by, whether the
worker has recorded that they were seen at the eye clinic, and who is overdue. Screening finds glaucoma;
only the referral that is kept treats it."""
from __future__ import annotations

import datetime as dt

from flask import Blueprint, flash, redirect, render_template, request, session, url_for
from flask_babel import gettext

from device.kiosk import get_unit
from device.kiosk.languages import day
from device.kiosk.outcome import EYE_NAME, VERDICT_SAYS
from device.kiosk.wording import said
from device.visits.followup import ATTENDED, OVERDUE, follow_up

bp = Blueprint("followup", __name__)


def referred_list(unit, today: dt.date | None = None) -> list[dict]:
    """The referred visits as `follow_up` sees them, each with the reading centre's latest verdict per eye."""
    rows = follow_up(unit.visits.referred_visits(), unit.config.clinic.refer_within_days, today or dt.date.today())
    for row in rows:
        row["verdicts"] = [{"eye": EYE_NAME[eye], "verdict": v["verdict"], "says": VERDICT_SAYS[v["verdict"]],
                            "note": v["note"]} for eye, v in sorted(unit.visits.latest_verdicts(row["visit_uuid"]).items())]
    return rows


@bp.get("/referred")
def referred():
    rows = referred_list(get_unit())
    show = request.args.get("show", "waiting")
    shown = rows if show == "all" else [r for r in rows if r["state"] != ATTENDED]
    return render_template("referred.html", rows=shown, show=show, today=dt.date.today(),
                           overdue=sum(r["state"] == OVERDUE for r in rows), total=len(rows))


@bp.post("/referred/<visit_uuid>/attended")
def attended(visit_uuid: str):
    text = (request.form.get("attended_on") or "").strip()
    try:
        on = dt.date.fromisoformat(text) if text else dt.date.today()
    except ValueError:
        flash(gettext("Not recorded: the day seen must be a date written year-month-day."), "warning")
        return redirect(url_for("followup.referred", show=request.args.get("show", "waiting")))
    try:
        get_unit().visits.mark_attended(visit_uuid, on=on, by=session["user"])
    except LookupError:
        flash(gettext("Not recorded: this visit is not on this unit."), "warning")
    except ValueError as exc:  # the visit log says why in English
        flash(gettext("Not recorded: %(reason)s.", reason=said(str(exc))), "warning")
    else:
        flash(gettext("Recorded: seen at the eye clinic on %(day)s.", day=day(on, "long")), "info")
    return redirect(url_for("followup.referred", show=request.args.get("show", "waiting")))
