"""A visit as the worker reads it: per eye, screened / skipped / still to do; and one referral for the
visit, the most urgent of its eyes', because the patient leaves with one instruction."""
from __future__ import annotations

from device.screening.referral import ADVICE, HEADLINE, NORMAL, REFER, RESCREEN
from device.visits.visitlog import EYES

EYE_NAME = {"right": "Right eye", "left": "Left eye"}
URGENCY = (REFER, RESCREEN, NORMAL)


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
    }


def visit_outcome(visit: dict) -> dict:
    eyes = [eye_outcome(eye, visit["eyes"][eye]) for eye in EYES]
    referrals = {e["referral"] for e in eyes if e["referral"]}
    referral = next((r for r in URGENCY if r in referrals), None)
    return {
        "eyes": eyes,
        "referral": referral,
        "headline": HEADLINE[referral] if referral else "No eye screened",
        "advice": ADVICE[referral] if referral else "Neither eye could be photographed today.",
        "next_eye": next((e["eye"] for e in eyes if e["status"] == "waiting"), None),
        "finished": visit["status"] == "finished",
    }
