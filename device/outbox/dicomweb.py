"""A small DICOMweb client: STOW-RS to store a visit's objects, QIDO-RS to see what the PACS holds.

Every store ends in one of three outcomes the sync outbox can act on:
- `stored`: the PACS holds every instance (a duplicate of what it already holds counts: UIDs are
  deterministic, so a resend is the same instance);
- `retry`: nothing wrong with the data, the road is blocked (no connection, timeout, 408, 429, 5xx,
  or a failure reason that says the server ran short of resources); send again later;
- `reject`: sending again will not help (authentication, a malformed request, a conflict, or a
  failure reason about the data itself); quarantine the item with the server's reason.

Credentials go in the request headers only: never into the URL, a log line or a result.
"""
from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import requests
from pydicom import Dataset, dcmread, dcmwrite

log = logging.getLogger(__name__)

STORED, RETRY, REJECT = "stored", "retry", "reject"
RETRY_STATUSES = {408, 429, 500, 502, 503, 504}

# STOW-RS Failure Reason (0008,1197) values, PS3.18 Table 10.5.3-2 and PS3.4 Annex B.
DUPLICATE_SOP_INSTANCE = 0x0111
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0117: "invalid SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0x0210: "duplicate invocation",
    0x0211: "unrecognized operation",
    0x0212: "mistyped argument",
    0x0213: "resource limitation",
    0xC122: "referenced transfer syntax not supported",
}


def _failure_text(code: int) -> str:
    if code in FAILURE_REASONS:
        return FAILURE_REASONS[code]
    if 0xA700 <= code <= 0xA7FF:
        return "out of resources"
    if 0xA900 <= code <= 0xA9FF:
        return "data set does not match SOP class"
    if 0xC000 <= code <= 0xCFFF:
        return "cannot understand"
    return "unknown failure"


def _retryable(code: int) -> bool:
    """Failures that are about the server's state rather than the data: worth sending again."""
    return code in (0x0110, 0x0213) or 0xA700 <= code <= 0xA7FF


@dataclass
class StoreResult:
    """What happened to one STOW-RS request, in the outbox's terms."""

    outcome: str  # stored | retry | reject
    status: int | None = None  # HTTP status; None when no answer came
    reason: str = ""  # the server's words (or the network's), for the operator
    stored: list[str] = field(default_factory=list)  # SOPInstanceUIDs the server confirmed
    failed: dict[str, str] = field(default_factory=dict)  # SOPInstanceUID -> failure reason
    warnings: list[str] = field(default_factory=list)
    retry_after: float | None = None  # seconds, when the server said (Retry-After)

    @property
    def ok(self) -> bool:
        return self.outcome == STORED


class DicomWebError(RuntimeError):
    """A QIDO-RS question the server did not answer; `retryable` says whether asking again may help."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class DicomWebClient:
    """STOW-RS and QIDO-RS against one DICOMweb root (e.g. https://pacs.example.org/dicom-web)."""

    def __init__(self, url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, timeout: float = 30):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the DICOMweb URL must start with http:// or https:// and name a server, not {url!r}")
        if parts.username or parts.password:
            raise ValueError("put the PACS user name and password in the sync settings, not in the URL")
        if token and (username or password):
            raise ValueError("give either a token or a user name and password for the PACS, not both")
        if (username is None) != (password is None):
            raise ValueError("the PACS user name and password go together: give both or neither")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        elif username is not None:
            assert password is not None  # checked above: the user name and password go together
            self._session.auth = (username, password)
        if ca_file:
            self._session.verify = ca_file

    def __repr__(self) -> str:
        return f"DicomWebClient({self.url!r})"

    def close(self) -> None:
        self._session.close()

    # --- STOW-RS ---------------------------------------------------------------------------

    def store(self, datasets: Iterable[Dataset]) -> StoreResult:
        """POST the datasets as one multipart/related request to {url}/studies."""
        files = []
        for ds in datasets:
            part = io.BytesIO()
            dcmwrite(part, ds, enforce_file_format=True)
            files.append(part.getvalue())
        return self.store_files(files)

    def store_files(self, files: list[bytes]) -> StoreResult:
        """POST already encoded DICOM files (as sync holds them) without decoding and encoding them again."""
        if not files:
            raise ValueError("nothing to store: the list of datasets is empty")
        expected = [str(dcmread(io.BytesIO(f), stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                    for f in files]
        boundary = uuid.uuid4().hex
        body = _multipart(files, boundary)
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        try:
            response = self._session.post(f"{self.url}/studies", data=body, headers=headers, timeout=self.timeout)
        except requests.Timeout:
            return self._logged(StoreResult(RETRY, reason=f"the PACS did not answer within {self.timeout:g} s"))
        except requests.ConnectionError as e:
            return self._logged(StoreResult(RETRY, reason=f"cannot reach the PACS: {_short(e)}"))
        except requests.RequestException as e:
            return self._logged(StoreResult(RETRY, reason=f"the request to the PACS failed: {_short(e)}"))
        return self._logged(_classify(response, expected))

    def _logged(self, result: StoreResult) -> StoreResult:
        log.info("STOW-RS %s: %s (HTTP %s) %s", self.url, result.outcome, result.status, result.reason)
        return result

    # --- QIDO-RS ---------------------------------------------------------------------------

    def instances(self, study_uid: str) -> list[Dataset]:
        """The instances the PACS holds for a study, as QIDO-RS describes them (empty if none)."""
        try:
            response = self._session.get(f"{self.url}/studies/{study_uid}/instances",
                                         headers={"Accept": "application/dicom+json"}, timeout=self.timeout)
        except requests.RequestException as e:
            raise DicomWebError(f"cannot ask the PACS about study {study_uid}: {_short(e)}", retryable=True) from None
        if response.status_code in (204, 404):
            return []
        if response.status_code != 200:
            raise DicomWebError(f"the PACS answered HTTP {response.status_code} about study {study_uid}: "
                                f"{_server_text(response)}", retryable=response.status_code in RETRY_STATUSES,
                                status=response.status_code)
        try:
            items = response.json() if response.content.strip() else []
        except ValueError:
            raise DicomWebError("the PACS answered a study query with something that is not DICOM JSON",
                                retryable=False, status=200) from None
        return [Dataset.from_json(item) for item in items]

    def study_exists(self, study_uid: str) -> bool:
        return bool(self.instances(study_uid))


def _multipart(files: list[bytes], boundary: str) -> bytes:
    out = io.BytesIO()
    for data in files:
        out.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        out.write(data)
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _classify(response: requests.Response, expected: list[str]) -> StoreResult:
    status = response.status_code
    stored, failed, warnings, failure_codes = _parse_store_response(response)
    retry_after = _retry_after(response)
    if status in RETRY_STATUSES:
        return StoreResult(RETRY, status, _reason(status, response, failed), stored, failed, warnings, retry_after)
    if status >= 400 or status < 200:
        return StoreResult(REJECT, status, _reason(status, response, failed), stored, failed, warnings, retry_after)
    # 200 or 202: judge instance by instance. A duplicate is the same instance stored before.
    real_failures = {uid: code for uid, code in failure_codes.items() if code != DUPLICATE_SOP_INSTANCE}
    confirmed = set(stored) | (set(failure_codes) - set(real_failures))
    if not real_failures:
        missing = [uid for uid in expected if uid not in confirmed]
        if missing:
            return StoreResult(RETRY, status, f"the PACS did not confirm {len(missing)} of {len(expected)} instances",
                               stored, failed, warnings, retry_after)
        return StoreResult(STORED, status, "; ".join(warnings), stored, failed, warnings, retry_after)
    outcome = RETRY if all(_retryable(code) for code in real_failures.values()) else REJECT
    return StoreResult(outcome, status, _reason(status, response, failed), stored, failed, warnings, retry_after)


def _parse_store_response(response: requests.Response):
    """ReferencedSOPSequence (0008,1199), FailedSOPSequence (0008,1198) and warnings, from DICOM JSON."""
    stored: list[str] = []
    failed: dict[str, str] = {}
    codes: dict[str, int] = {}
    warnings: list[str] = []
    try:
        body = response.json() if response.content.strip() else {}
    except ValueError:
        return stored, failed, warnings, codes
    if not isinstance(body, dict):
        return stored, failed, warnings, codes
    for item in _values(body, "00081199"):
        uid = _first(item, "00081155")
        if uid:
            stored.append(uid)
        warning = _first(item, "00081196")
        if warning is not None:
            warnings.append(f"{uid}: warning {int(warning):#06x}")
    for item in _values(body, "00081198"):
        uid = _first(item, "00081155") or "?"
        code = int(_first(item, "00081197") or 0)
        codes[uid] = code
        failed[uid] = f"{_failure_text(code)} ({code:#06x})"
    return stored, failed, warnings, codes


def _values(body: dict, tag: str) -> list:
    element = body.get(tag)
    return (element.get("Value") or []) if isinstance(element, dict) else []


def _first(item: dict, tag: str):
    values = _values(item, tag)
    return values[0] if values else None


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None


def _reason(status: int, response: requests.Response, failed: dict[str, str]) -> str:
    words = {400: "the PACS could not read the request", 401: "the PACS refused the credentials",
             403: "the PACS does not allow this unit to store", 404: "no DICOMweb service at this URL",
             409: "the PACS refused the instances (conflict)", 413: "the request is too large for the PACS",
             415: "the PACS does not accept this media type", 408: "the PACS timed out reading the request",
             429: "the PACS asks to slow down", 503: "the PACS is unavailable"}
    text = words.get(status, f"the PACS answered HTTP {status}")
    if failed:
        text += ": " + "; ".join(f"{uid} {why}" for uid, why in failed.items())
    elif not response.headers.get("Content-Type", "").startswith("application/dicom+json"):
        server = _server_text(response)
        if server:
            text += f": {server}"
    return text


def _server_text(response: requests.Response) -> str:
    return " ".join(response.text.split())[:300]


def _short(error: Exception) -> str:
    """The network error's gist (urllib3 keeps it in `reason`); credentials are never part of it."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return str(reason or error)[:300]
