"""The vCDR trend of one eye across visits, as the geometry of a small SVG the template draws.

Drawn on the server so the kiosk needs no chart library; the x axis is time (not visit number), so a
cup that grew in six months looks steeper than one that grew in three years.
"""
from __future__ import annotations

import datetime as dt

from device.kiosk.languages import day, decimal

WIDTH, HEIGHT = 360, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 12, 30
INSET = 12   # the first and last visit sit this far inside the axes, clear of the labels
GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp).astimezone()


def vcdr_chart(history: list[dict]) -> dict | None:
    """Points, line and labels for `VisitLog.eye_history` rows; None when the eye has no measured visit."""
    rows = [r for r in history if r.get("vcdr") is not None]
    if not rows:
        return None
    times = [_when(r["time"]).timestamp() for r in rows]
    span = max(times) - min(times)
    inner_w, inner_h = WIDTH - LEFT - RIGHT - 2 * INSET, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return round(LEFT + INSET + (inner_w / 2 if span == 0 else inner_w * (t - min(times)) / span), 1)

    def y(v: float) -> float:
        return round(TOP + inner_h * (1.0 - min(max(v, 0.0), 1.0)), 1)

    points = [{"x": x(t), "y": y(r["vcdr"]), "vcdr": r["vcdr"], "referral": r["referral"],
               "date": day(_when(r["time"]).date())} for t, r in zip(times, rows)]
    if len(points) == 1:
        xlabels = [{"x": points[0]["x"], "label": points[0]["date"], "anchor": "middle"}]
    else:  # the first and last dates, kept inside the chart
        xlabels = [{"x": LEFT, "label": points[0]["date"], "anchor": "start"},
                   {"x": WIDTH - RIGHT, "label": points[-1]["date"], "anchor": "end"}]
    return {
        "width": WIDTH, "height": HEIGHT, "left": LEFT, "right": WIDTH - RIGHT, "bottom": HEIGHT - BOTTOM,
        "points": points,
        "line": " ".join(f"{p['x']},{p['y']}" for p in points),
        "grid": [{"y": y(g), "label": decimal(g, "0.0")} for g in GRID],
        "xlabels": xlabels,
        "latest": rows[-1]["vcdr"],
        "change": rows[-1]["vcdr"] - rows[0]["vcdr"] if len(rows) > 1 else None,
    }
