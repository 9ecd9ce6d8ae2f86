"""The unit's DICOMweb: STOW-RS to store a visit's objects, QIDO-RS to see what the PACS holds, WADO-RS to fetch
an instance. The requests themselves are dicomweb-client's (its DICOMwebClient); what this module adds is the
unit's rules for every request, held by the requests session it gives that client, and the reading of each
answer in the outbox's terms.

Every store ends in one of three outcomes the sync outbox can act on:
- `stored`: the PACS holds every instance (a duplicate of what it already holds counts: UIDs are
  deterministic, so a resend is the same instance);
- `retry`: nothing wrong with the data, the road is blocked (no connection, timeout, 408, 429, 5xx,
  or a failure reason that says the server ran short of resources); send again later;
- `reject`: sending again will not help (authentication, a malformed request, a conflict, or a
  failure reason about the data itself); quarantine the item with the server's reason.

Credentials go in the request headers only: never into the URL, a log line or a result. A PACS (or a proxy)
may echo them back (an error page quoting the Authorization header, a failure reason holding the URL with
its user name and password); every word of the server's that becomes a result, an error or a log line is
scrubbed of the configured password and token, any Authorization, Basic or Bearer value and URL userinfo.

Each request has two limits: `timeout` for connecting and for each read (a server that says nothing), and
`deadline` for the whole request (a server that trickles a byte a second, which no per-read timeout ends).
At the deadline the connection is shut, whatever the request was doing.

The configured CA bundle (`ca_file`) is passed with every request, so REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE
in the environment cannot replace it (requests lets them win over a session's own `verify`).
"""
from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import email.utils
import io
import json
import logging
import math
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset, dcmread, dcmwrite
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

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


# --- Credentials never leave in words -------------------------------------------------------------

REDACTED = "[redacted]"
# An Authorization (or Proxy-Authorization) header as a server may quote it: in a header dump, in JSON, in HTML.
_AUTH_HEADER = re.compile(r"""(\b(?:proxy-)?authorization["']?\s*[:=]\s*["']?)[^\r\n"'<>]+""", re.IGNORECASE)
# A scheme's credentials wherever they stand (token68 per RFC 9110 11.2).
_AUTH_VALUE = re.compile(r"\b(basic|bearer)(\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)
# user:password@ in a URL.
_USERINFO = re.compile(r"\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]*@", re.IGNORECASE)


def _without_userinfo(url: str) -> str:
    """A URL as it may be shown: whatever stands before an @ in its server part (user:password) redacted, even
    when the URL is too malformed for urlsplit to say where its server part is."""
    return re.sub(r"^([a-z][a-z0-9+.\-]*://)?[^/]*@", lambda m: (m.group(1) or "") + REDACTED + "@", url.strip(),
                  flags=re.IGNORECASE)


def secret_forms(*, token: str | None = None, username: str | None = None, password: str | None = None) -> list[str]:
    """The ways a configured credential may come back in a server's words: as given, in the Basic header's
    base64, URL-encoded and JSON-escaped. Longest first, so no shorter one leaves part of a longer one."""
    forms: set[str] = set()
    for secret in (token, password):
        if secret:
            forms |= {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1],
                      json.dumps(secret, ensure_ascii=False)[1:-1]}
    if username is not None and password:
        pair = f"{username}:{password}"
        forms.add(pair)
        for encoding in ("latin-1", "utf-8"):  # requests encodes Basic credentials as latin-1 where it can
            try:
                forms.add(base64.b64encode(pair.encode(encoding)).decode("ascii"))
            except UnicodeEncodeError:
                pass
    return sorted((f for f in forms if f), key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without the given secrets, Authorization header values, Basic/Bearer credentials or URL userinfo."""
    if not text:
        return text
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _AUTH_HEADER.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_VALUE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)


# --- A deadline for the whole request -----------------------------------------------------------
# requests' `timeout` bounds connecting and each read, never the whole request. The client arms a _Deadline
# around each request; the connection the request uses registers with it (on connecting and on each request
# it sends), and when time runs out the deadline shuts that connection's socket: the blocked send or receive
# ends at once, and the request fails as if the server had hung up.

_current = threading.local()


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._lock = threading.Lock()
        self._done = False
        self._connection: HTTPConnection | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        _current.deadline = None
        with self._lock:  # after this the timer touches nothing: the connection may go back to the pool
            self._done = True
            self._connection = None
        self._timer.cancel()

    def watch(self, connection: HTTPConnection) -> None:
        with self._lock:
            if self._done:
                return
            self._connection = connection
            if self.expired:  # time ran out while this connection was being set up
                _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            if self._connection is not None:
                _shut(self._connection)


def _shut(connection: HTTPConnection) -> None:
    """Shut the connection's socket, TLS or not, without touching its TLS state from this thread. A socket that
    was closed meanwhile has no descriptor left (Python sets it to -1), so no other socket is ever hit."""
    sock = connection.sock
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _WatchedMixin:
    def connect(self) -> None:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)
        super().connect()  # type: ignore[misc]
        if deadline is not None:
            deadline.watch(self)  # the socket it now has; shut at once if time ran out meanwhile

    def request(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_current, "deadline", None)
        if deadline is not None:
            deadline.watch(self)  # a kept-alive connection, reused
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedMixin, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedMixin, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """requests' adapter whose connections register with the request's deadline (also through an HTTP proxy;
    a SOCKS proxy keeps its own connections, and there only `timeout` holds)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_WATCHED_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        fresh = proxy not in self.proxy_manager
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if fresh and not proxy.lower().startswith("socks"):
            manager.pool_classes_by_scheme = dict(_WATCHED_POOLS)
        return manager


class DeadlinePassed(Exception):
    pass


class DicomWebError(RuntimeError):
    """A QIDO-RS question the server did not answer; `retryable` says whether asking again may help."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class GuardedSession(requests.Session):
    """The session dicomweb-client sends every request through, holding the unit's rules for each: `timeout` per
    read, `deadline` for the whole request, the configured CA (given with every request, so the environment cannot
    replace it), and the answer kept, so the outbox judges the server's own status and words whatever the library
    made of them."""

    def __init__(self, *, timeout: float, deadline: float, verify: str | bool):
        super().__init__()
        for prefix in ("https://", "http://"):
            self.mount(prefix, _DeadlineAdapter())
        self.timeout, self.deadline, self._verify = timeout, deadline, verify
        if isinstance(verify, str):
            self.verify = verify
        self._answers = threading.local()

    @property
    def answer(self) -> requests.Response | None:
        """The last whole answer this thread received (None: none since `forget_answer`)."""
        return getattr(self._answers, "response", None)

    def forget_answer(self) -> None:
        self._answers.response = None

    @contextlib.contextmanager
    def body_unread_by_the_library(self) -> Iterator[None]:
        """Within: dicomweb-client sees each answer without its body (the answer kept has it). For a store,
        whose outcome the outbox reads from the answer itself: the library's own reading of a failure reason
        (pydicom warns with any value it finds invalid, into the log and stderr) would repeat the server's
        words unscrubbed."""
        self._answers.blind = True
        try:
            yield
        finally:
            self._answers.blind = False

    def request(self, method, url, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs["timeout"] = self.timeout
        kwargs["verify"] = self._verify
        # dicomweb-client names the host without its port; requests writes the right Host from the URL itself
        kwargs["headers"] = {k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "host"}
        deadline = _Deadline(self.deadline)
        try:
            with deadline:
                response = super().request(method, url, *args, **kwargs)
        except requests.RequestException:
            if deadline.expired:
                raise DeadlinePassed() from None
            raise
        self._answers.response = response  # whole: an answer that came in just as time ran out stands
        if getattr(self._answers, "blind", False):
            shown = copy.copy(response)
            shown._content = b""
            return shown
        return response


class _ScrubbedLog(logging.Filter):
    """dicomweb-client logs some of what servers say (a Warning header): scrubbed like every other word of
    theirs, of the credentials of every client open in this process."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[int, list[str]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        forms = sorted({s for found in list(self.secrets.values()) for s in found}, key=len, reverse=True)
        record.msg, record.args = redact(record.getMessage(), forms), None
        return True


_LIBRARY_LOG = _ScrubbedLog()
logging.getLogger("dicomweb_client").addFilter(_LIBRARY_LOG)
_WHOLE_BODY = 2**62  # dicomweb-client sends a body larger than its chunk size chunked, which some PACS refuse
_RAISE = object()


class DicomWebClient:
    """STOW-RS, QIDO-RS and WADO-RS against one DICOMweb root (e.g. https://pacs.example.org/dicom-web), through
    dicomweb-client's DICOMwebClient on a session that keeps the unit's rules (`GuardedSession`)."""

    def __init__(self, url: str, *, token: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None, timeout: float = 30,
                 deadline: float = 300):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the DICOMweb URL must start with http:// or https:// and name a server, "
                             f"not {_without_userinfo(url)!r}")
        if parts.username or parts.password:
            raise ValueError("put the PACS user name and password in the sync settings, not in the URL")
        if token and (username or password):
            raise ValueError("give either a token or a user name and password for the PACS, not both")
        if (username is None) != (password is None):
            raise ValueError("the PACS user name and password go together: give both or neither")
        if not (timeout > 0 and math.isfinite(timeout)) or not (deadline > 0 and math.isfinite(deadline)):
            raise ValueError(f"the timeout and the deadline must be positive numbers of seconds, not {timeout} and {deadline}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.deadline = deadline
        self._secrets = secret_forms(token=token, username=username, password=password)
        self._session = GuardedSession(timeout=timeout, deadline=deadline, verify=ca_file or True)
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"
        elif username is not None:
            assert password is not None  # checked above: the user name and password go together
            self._session.auth = (username, password)
        self._api = DICOMwebClient(self.url, session=self._session, timeout=timeout)
        self._api.set_http_retry_params(retry=False)  # the outbox decides when to send again, not the library
        self._api.set_chunk_size(_WHOLE_BODY)
        _LIBRARY_LOG.secrets[id(self)] = self._secrets

    def __repr__(self) -> str:
        return f"DicomWebClient({self.url!r})"

    def close(self) -> None:
        _LIBRARY_LOG.secrets.pop(id(self), None)
        self._session.close()

    def redact(self, text: str) -> str:
        """`text` without this client's credentials (or anyone's Authorization values and URL userinfo)."""
        return redact(text, self._secrets)

    # --- STOW-RS ---------------------------------------------------------------------------

    def store(self, datasets: Iterable[Dataset]) -> StoreResult:
        """Store the datasets as one STOW-RS request to {url}/studies."""
        files = []
        for ds in datasets:
            part = io.BytesIO()
            dcmwrite(part, ds, enforce_file_format=True)
            files.append(part.getvalue())
        return self.store_files(files)

    def store_files(self, files: list[bytes]) -> StoreResult:
        """Store already encoded DICOM files (as sync holds them) as one STOW-RS request."""
        if not files:
            raise ValueError("nothing to store: the list of datasets is empty")
        datasets = [dcmread(io.BytesIO(f)) for f in files]
        expected = [str(ds.SOPInstanceUID) for ds in datasets]
        self._session.forget_answer()
        try:
            with self._session.body_unread_by_the_library():
                self._api.store_instances(datasets)
        except DeadlinePassed:
            return self._logged(StoreResult(RETRY, reason=f"the PACS did not finish the request within {self.deadline:g} s"))
        except Exception as exc:  # noqa: BLE001 - an answer is judged below whatever the library made of it
            if self._session.answer is None:
                return self._logged(self._no_answer(exc))
        answer = self._session.answer
        assert answer is not None  # the request returned, so the session kept its answer
        return self._logged(_classify(answer, expected, self.redact))

    def _no_answer(self, exc: Exception) -> StoreResult:
        """Why no answer came, in the outbox's terms; anything but a failed request is a fault here, raised."""
        if isinstance(exc, requests.Timeout):
            return StoreResult(RETRY, reason=f"the PACS did not answer within {self.timeout:g} s")
        if isinstance(exc, requests.ConnectionError):
            return StoreResult(RETRY, reason=f"cannot reach the PACS: {_short(exc, self.redact)}")
        if isinstance(exc, requests.RequestException):
            return StoreResult(RETRY, reason=f"the request to the PACS failed: {_short(exc, self.redact)}")
        raise exc

    def _logged(self, result: StoreResult) -> StoreResult:
        """The result with the server's words scrubbed of credentials, and logged."""
        result.reason = self.redact(result.reason)
        result.warnings = [self.redact(w) for w in result.warnings]
        result.failed = {self.redact(uid): self.redact(why) for uid, why in result.failed.items()}
        result.stored = [self.redact(uid) for uid in result.stored]
        log.info("STOW-RS %s: %s (HTTP %s) %s", self.url, result.outcome, result.status, result.reason)
        return result

    # --- QIDO-RS and WADO-RS ----------------------------------------------------------------

    def _ask(self, what: str, call: Callable[[], Any], *, missing: Any = _RAISE) -> Any:
        """`call`'s value, or DicomWebError saying in words why the PACS did not answer `what`; an answer of
        204 or 404 gives `missing` where one is given."""
        self._session.forget_answer()
        try:
            return call()
        except DeadlinePassed:
            raise DicomWebError(f"the PACS did not finish answering {what} within {self.deadline:g} s",
                                retryable=True) from None
        except Exception as exc:  # noqa: BLE001 - judged by the answer, or by what kept it from coming
            answer = self._session.answer
            if answer is None:
                if not isinstance(exc, requests.RequestException):
                    raise
                raise DicomWebError(f"cannot ask the PACS {what}: {_short(exc, self.redact)}", retryable=True) from None
        status = answer.status_code
        if status in (204, 404) and missing is not _RAISE:
            return missing
        if status != 200:
            raise DicomWebError(f"the PACS answered HTTP {status} {what}: {_server_text(answer, self.redact)}",
                                retryable=status in RETRY_STATUSES, status=status)
        raise DicomWebError(f"the PACS answered {what} with something that is not DICOM", retryable=False, status=200)

    def _search(self, what: str, call: Callable[[], list[dict]]) -> list[Dataset]:
        items = self._ask(what, call, missing=[])
        try:
            return [Dataset.from_json(item) for item in items]
        except (TypeError, ValueError, KeyError, AttributeError):
            raise DicomWebError(f"the PACS answered {what} with something that is not DICOM JSON", retryable=False,
                                status=200) from None

    def instances(self, study_uid: str, *, modality: str | None = None) -> list[Dataset]:
        """The instances the PACS holds for a study (of one modality, where given), as QIDO-RS describes them
        (empty if none)."""
        filters = {"Modality": modality} if modality else None
        return self._search(f"about study {study_uid}", lambda: self._api.search_for_instances(
            study_instance_uid=study_uid, search_filters=filters))

    def study_exists(self, study_uid: str) -> bool:
        return bool(self.instances(study_uid))

    def studies(self, *, limit: int | None = None, fields: Iterable[str] = ()) -> list[Dataset]:
        """The studies the PACS holds, as QIDO-RS describes them (with `fields` besides its defaults)."""
        return self._search("which studies it holds", lambda: self._api.search_for_studies(
            limit=limit, fields=list(fields) or None))

    def all_instances(self, *, modality: str, fields: Iterable[str] = ()) -> list[Dataset]:
        """Every instance of one modality the PACS holds, across studies, in one QIDO-RS question."""
        return self._search(f"which {modality} instances it holds", lambda: self._api.search_for_instances(
            search_filters={"Modality": modality}, fields=list(fields) or None))

    def retrieve(self, study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
        """One instance by WADO-RS, in the transfer syntax the PACS holds it in (a photo's JPEG as it was taken)."""
        found = self._ask(f"for instance {sop_uid}", lambda: self._api.retrieve_instance(
            study_uid, series_uid, sop_uid, media_types=(("application/dicom", "*"),)), missing=None)
        if found is None:
            raise DicomWebError(f"the PACS does not hold instance {sop_uid}", retryable=False, status=404)
        return found


def _classify(response: requests.Response, expected: list[str], scrub: Callable[[str], str] = redact) -> StoreResult:
    status = response.status_code
    stored, failed, warnings, failure_codes = _parse_store_response(response)
    retry_after = _retry_after(response)
    if status in RETRY_STATUSES:
        return StoreResult(RETRY, status, _reason(status, response, failed, scrub), stored, failed, warnings, retry_after)
    if status >= 400 or status < 200:
        return StoreResult(REJECT, status, _reason(status, response, failed, scrub), stored, failed, warnings, retry_after)
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
    return StoreResult(outcome, status, _reason(status, response, failed, scrub), stored, failed, warnings, retry_after)


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
    """Seconds the server asks to wait (Retry-After, RFC 9110 10.2.3), never raising on what it sent.

    delta-seconds, or an HTTP-date (counted from now; one in the past means now). Read leniently: "1.5", "1e9"
    and "inf" are taken as numbers, so the value may be huge or infinite; the sync caps it. A negative number
    means now; NaN, an empty or unreadable value is as if there were none.
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _http_date_from_now(text)
    if seconds is None or math.isnan(seconds):
        return None
    return max(0.0, seconds)


def _http_date_from_now(text: str) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - dt.datetime.now(dt.timezone.utc)).total_seconds()


def _reason(status: int, response: requests.Response, failed: dict[str, str], scrub: Callable[[str], str]) -> str:
    words = {400: "the PACS could not read the request", 401: "the PACS refused the credentials",
             403: "the PACS does not allow this unit to store", 404: "no DICOMweb service at this URL",
             409: "the PACS refused the instances (conflict)", 413: "the request is too large for the PACS",
             415: "the PACS does not accept this media type", 408: "the PACS timed out reading the request",
             429: "the PACS asks to slow down", 503: "the PACS is unavailable"}
    text = words.get(status, f"the PACS answered HTTP {status}")
    if failed:
        text += ": " + "; ".join(f"{uid} {why}" for uid, why in failed.items())
    elif not response.headers.get("Content-Type", "").startswith("application/dicom+json"):
        server = _server_text(response, scrub)
        if server:
            text += f": {server}"
    return text


def _server_text(response: requests.Response, scrub: Callable[[str], str] = redact) -> str:
    """The server's words on one line, scrubbed of credentials before they are cut short (a cut must not leave
    half a password that no scrub would recognise)."""
    return " ".join(scrub(response.text[:20000]).split())[:300]


def _short(error: Exception, scrub: Callable[[str], str] = redact) -> str:
    """The network error's gist (urllib3 keeps it in `reason`), scrubbed (a proxy's URL may hold its password)."""
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return scrub(str(reason or error))[:300]
