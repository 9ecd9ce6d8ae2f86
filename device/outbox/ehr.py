"""Sending an eye's FHIR bundle (`device.outbox.fhir`) to the clinic's EHR: one POST of the transaction to the
FHIR base URL, answered in the outbox's three outcomes as the PACS's are (`device.outbox.dicomweb`):
- stored: the EHR answered a transaction-response whose every entry is 2xx (201 created, or 200 when
  `ifNoneExist` found the resource: a resend);
- retry: no answer, a timeout, 408, 429 or 5xx (with its Retry-After), or an answer that confirms nothing;
- reject: any other refusal (a bundle it cannot take, 412 for an identifier it holds twice), with its words.
The request goes through the same session rules as the PACS's: per-read timeout, a deadline for the whole
request, the configured CA, and the EHR's words scrubbed of the token before they are kept or logged.
"""
from __future__ import annotations

import logging
import math
from urllib.parse import urlsplit

import requests

from device.outbox.dicomweb import (
    REJECT,
    RETRY,
    RETRY_STATUSES,
    STORED,
    DeadlinePassed,
    GuardedSession,
    StoreResult,
    _retry_after,
    _server_text,
    _short,
    _without_userinfo,
    redact,
    secret_forms,
)

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"


class EhrClient:
    """FHIR transactions against one FHIR base URL (e.g. https://ehr.example.org/fhir)."""

    def __init__(self, url: str, *, token: str | None = None, ca_file: str | None = None, timeout: float = 30,
                 deadline: float = 300):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the FHIR URL must start with http:// or https:// and name a server, not {_without_userinfo(url)!r}")
        if parts.username or parts.password:
            raise ValueError("put the EHR's token in fhir_token_file, not in the URL")
        if not (timeout > 0 and math.isfinite(timeout)) or not (deadline > 0 and math.isfinite(deadline)):
            raise ValueError(f"the timeout and the deadline must be positive numbers of seconds, not {timeout} and {deadline}")
        self.url = url.rstrip("/")
        self.timeout, self.deadline = timeout, deadline
        self._secrets = secret_forms(token=token)
        self._session = GuardedSession(timeout=timeout, deadline=deadline, verify=ca_file or True)
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def __repr__(self) -> str:
        return f"EhrClient({self.url!r})"

    def close(self) -> None:
        self._session.close()

    def redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def send(self, bundle: bytes) -> StoreResult:
        """POST one transaction bundle to the base URL; the outcome in the outbox's terms, scrubbed and logged."""
        try:
            answer = self._session.post(self.url, data=bundle,
                                        headers={"Content-Type": f"{FHIR_JSON}; charset=utf-8", "Accept": FHIR_JSON})
        except DeadlinePassed:
            result = StoreResult(RETRY, reason=f"the EHR did not finish the request within {self.deadline:g} s")
        except requests.Timeout:
            result = StoreResult(RETRY, reason=f"the EHR did not answer within {self.timeout:g} s")
        except requests.ConnectionError as exc:
            result = StoreResult(RETRY, reason=f"cannot reach the EHR: {_short(exc, self.redact)}")
        except requests.RequestException as exc:
            result = StoreResult(RETRY, reason=f"the request to the EHR failed: {_short(exc, self.redact)}")
        else:
            result = self._judge(answer)
        result.reason = self.redact(result.reason)
        log.info("FHIR transaction %s: %s (HTTP %s) %s", self.url, result.outcome, result.status, result.reason)
        return result

    def _judge(self, answer: requests.Response) -> StoreResult:
        status, retry_after = answer.status_code, _retry_after(answer)
        if status in RETRY_STATUSES:
            return StoreResult(RETRY, status, f"the EHR answered HTTP {status}: {self._words(answer)}", retry_after=retry_after)
        if not 200 <= status < 300:
            return StoreResult(REJECT, status, f"the EHR refused the bundle (HTTP {status}): {self._words(answer)}",
                               retry_after=retry_after)
        try:
            body = answer.json()
        except ValueError:
            body = None
        entries = body.get("entry") if isinstance(body, dict) and body.get("type") == "transaction-response" else None
        if not isinstance(entries, list) or not entries:
            return StoreResult(RETRY, status, "the EHR did not answer with a transaction-response")
        statuses = [str(((e or {}).get("response") or {}).get("status", "")) for e in entries]
        if not all(s[:1] == "2" for s in statuses):
            return StoreResult(REJECT, status, "the EHR refused part of the bundle: " + "; ".join(statuses))
        created = sum(s.startswith("201") for s in statuses)
        return StoreResult(STORED, status, f"{created} created, {len(statuses) - created} already there")

    def _words(self, answer: requests.Response) -> str:
        """An OperationOutcome's diagnostics where the EHR sent one, else its text, on one line."""
        try:
            body = answer.json()
        except ValueError:
            return _server_text(answer, self.redact)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            issues = [str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", ""))
                      for i in body.get("issue") or [] if isinstance(i, dict)]
            return self.redact(" ".join("; ".join(issues).split()))[:300]
        return _server_text(answer, self.redact)
