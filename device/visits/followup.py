"""Where each referred patient stands: the day they should have been seen at the eye clinic by, and
whether they were (attended), are late (overdue) or still have time (due). The kiosk's Referred list and
the USB export's referred.csv both read it, so the clinic's sheet and the screen agree."""
from __future__ import annotations

import datetime as dt

ATTENDED, OVERDUE, DUE = "attended", "overdue", "due"


def follow_up(rows: list[dict], refer_within_days: int, today: dt.date) -> list[dict]:
    """`VisitLog.referred_visits()` rows, each with `visited_on`, `go_by`, `state` and `days_overdue`."""
    out = []
    for row in rows:
        visited = dt.datetime.fromisoformat(row["started_at"]).astimezone().date()
        go_by = visited + dt.timedelta(days=refer_within_days)
        state = ATTENDED if row["attended_on"] else OVERDUE if today > go_by else DUE
        out.append(row | {"visited_on": visited, "go_by": go_by, "state": state,
                          "days_overdue": (today - go_by).days if state == OVERDUE else 0})
    return out
