"""A visit as the worker reads it: per eye, screened / skipped / still to do; and one referral for the
visit, the most urgent of its eyes', because the patient leaves with one instruction."""
from __future__ import annotations

from flask_babel import gettext, lazy_gettext

from device.screening.referral import ADVICE, HEADLINE, NORMAL, REFER, RESCREEN
from device.visits.visitlog import EYES

EYE_NAME = {"right": lazy_gettext("Right eye"), "left": lazy_gettext("Left eye")}
URGENCY = (REFER, RESCREEN, NORMAL)
# The reading centre's verdict on an eye (device.outbox.verdicts), as the worker reads it after "The eye doctor says:"
VERDICT_SAYS = {
    "urgent": lazy_gettext("urgent referral. Send the patient to the eye clinic now."),
    "refer": lazy_gettext("referral. The patient should see an eye doctor."),
    "routine": lazy_gettext("no glaucoma signs. Screen again at the usual time."),
    "retake": lazy_gettext("the photo cannot be graded. Ask the patient to come back for a new photo."),
}


def eye_outcome(eye: str, state: dict) -> dict:
    """What the result, patient and slip pages show for one eye of a visit (from `VisitLog.get_visit`)."""
    result = state["result"]
    if state["skipped"] is not None:
        status = "skipped"
    elif result is not None:
        status = "screened"
    else:
        status = "waiting"
    return {
        "eye": eye,
        "name": EYE_NAME[eye],
        "status": status,
        "skipped": state["skipped"],
        "screening": result["screening"] if result else None,
        "referral": result["referral"] if result and status == "screened" else None,
        "overlay": (result.get("overlay_sha256") if result else None) or (state["capture"] or {}).get("photo_sha256"),
        "close_up": bool(result and result.get("overlay_sha256") and result["screening"].get("disc")),
        "photos": state["captures"],
        "verdict": state.get("verdict"),
        "verdict_says": VERDICT_SAYS[state["verdict"]["verdict"]] if state.get("verdict") else None,
        # what the eye doctor said before correcting it: the worker may have told the patient so already
        "verdicts_before": [v | {"says": VERDICT_SAYS[v["verdict"]]} for v in state.get("verdicts_before", [])],
    }


def visit_outcome(visit: dict) -> dict:
    eyes = [eye_outcome(eye, visit["eyes"][eye]) for eye in EYES]
    referrals = {e["referral"] for e in eyes if e["referral"]}
    referral = next((r for r in URGENCY if r in referrals), None)
    return {
        "eyes": eyes,
        "referral": referral,
        # in the language of the page being made (a patient's, for the slip)
        "headline": gettext(HEADLINE[referral]) if referral else gettext("No eye screened"),
        "advice": gettext(ADVICE[referral]) if referral else gettext("Neither eye could be photographed today."),
        "next_eye": next((e["eye"] for e in eyes if e["status"] == "waiting"), None),
        "finished": visit["status"] == "finished",
    }
