"""The sending page: where results go (the PACS's address), how the last attempt went (the error in
words), who is waiting to be sent (patient and clinic number) and who needs attention, and a "Send now"
button that sends in the background while the page follows it. An admin's page: the same counts as
the home page, because both read the one outbox."""
from __future__ import annotations

import logging
import threading

from flask import Blueprint, current_app, flash, redirect, render_template, session, url_for
from flask_babel import gettext, ngettext

from device.kiosk import get_unit
from device.kiosk.languages import english, filled
from device.kiosk.security import admin_required
from device.outbox.dicomweb import redact
from device.outbox.sync import SyncConfigError, client_from_config, ehr_client_from_config, sync_once

bp = Blueprint("sending", __name__, url_prefix="/admin/sync")
log = logging.getLogger(__name__)


class SendNow:
    """One background send at a time, and what the last one did (for the page to show)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = False
        self.last: dict | None = None

    def start(self, unit) -> None:
        with self.lock:
            if self.running:
                return
            self.running = True
        threading.Thread(target=self._send, args=(unit,), name="send-now", daemon=True).start()

    def _send(self, unit) -> None:
        outcome: dict
        try:
            client = client_from_config(unit.config.sync)
            ehr = None
            try:
                ehr = ehr_client_from_config(unit.config.sync)  # the EHR's items go with the button too
                report = sync_once(unit.visits, client, device_id=unit.config.device_id,
                                   max_retry_after_s=unit.config.sync.max_retry_after_s, ehr=ehr)
            finally:
                client.close()
                if ehr is not None:
                    ehr.close()
            outcome = {"sent": report.sent, "failed": report.failed, "quarantined": report.quarantined,
                       "stopped": report.stopped}
        except Exception as exc:  # noqa: BLE001 - a send that fails must say why on the page, not kill the kiosk
            log.exception("send now failed")
            outcome = {"error": str(exc)}
        with self.lock:
            self.running, self.last = False, outcome


def _send_now() -> SendNow:
    return current_app.extensions.setdefault("glaucoscreen.send_now", SendNow())


@bp.get("")
@admin_required
def page():
    unit = get_unit()
    visits = unit.visits
    url = unit.config.sync.url.strip()
    return render_template("sync.html", outbox=visits.outbox_counts(), waiting=visits.outbox_listed("pending"),
                           held=visits.outbox_listed("quarantined"), last_attempt=visits.outbox_last_attempt(),
                           pacs=redact(url) if url else None, sending=_send_now())


@bp.post("/send")
@admin_required
def send_now():
    unit = get_unit()
    if not unit.config.sync.url.strip():
        flash(gettext("No PACS address is set, so nothing can be sent: results are kept and can be exported to a USB stick."),
              "warning")
        return redirect(url_for("sending.page"))
    try:
        client_from_config(unit.config.sync).close()  # settings that cannot work are said now, not in a log
    except SyncConfigError as exc:  # which setting to fix, in the configuration's own words: for the IT person
        flash(filled(gettext("Cannot send: %(reason)s."), reason=english(exc)), "warning")
        return redirect(url_for("sending.page"))
    waiting = unit.visits.outbox_due_now()
    _send_now().start(unit)
    log.info("kiosk: %s pressed Send now (%d waiting)", session["user"], waiting)
    flash(ngettext("Sending %(num)d result now.", "Sending %(num)d results now.", waiting), "info")
    return redirect(url_for("sending.page"))


@bp.post("/<int:item_id>/retry")
@admin_required
def retry(item_id: int):
    try:
        get_unit().visits.outbox_requeue(item_id)
    except (ValueError, LookupError):  # sent again or sent meanwhile, from another screen or by sync
        flash(gettext("Not queued again: it is no longer held back."), "warning")
        return redirect(url_for("sending.page"))
    log.info("kiosk: %s queued outbox item %d again", session["user"], item_id)
    flash(gettext("Queued again: it goes with the next sync."), "info")
    return redirect(url_for("sending.page"))
