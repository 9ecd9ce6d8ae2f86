"""The screening programme's own server, beside its PACS: where the unit looks for new models and sends its health.

Requests go with the [sync] section's CA file and timeout, as the PACS's do. The PACS's credentials go
along only to an address on the PACS's own server (the same scheme, host and port): a release server or
dashboard elsewhere never sees them. Answers are bounded in size, so a wrong address that streams
something endless cannot fill the unit's disk.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import requests

MAX_INDEX_BYTES = 64 * 1024
MAX_BUNDLE_BYTES = 2 * 2**30
_CHUNK = 1 << 20


class ProgrammeError(RuntimeError):
    """The programme's server could not be asked, or answered what the unit cannot use; the message says which."""


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or {"http": 80, "https": 443}.get(parts.scheme)


class ProgrammeClient:
    def __init__(self, *, pacs_url: str = "", token: str | None = None, auth: tuple[str, str] | None = None,
                 ca_file: str | None = None, timeout: float = 30.0):
        self.pacs_origin = _origin(pacs_url) if pacs_url else None
        self.timeout = timeout
        # Given with every request: requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's verify.
        self._verify: str | bool = ca_file or True
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._auth = auth
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "ProgrammeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, **kwargs) -> requests.Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ProgrammeError(f"{url!r} is not an http:// or https:// address")
        if parts.username or parts.password:
            raise ProgrammeError("an address in the unit's configuration must not carry a user name or password")
        headers, auth = dict(kwargs.pop("headers", {})), None
        if self.pacs_origin is not None and _origin(url) == self.pacs_origin:
            headers, auth = {**self._headers, **headers}, self._auth
        try:
            return self._session.request(method, url, timeout=self.timeout, verify=self._verify,
                                         allow_redirects=False, headers=headers, auth=auth, **kwargs)
        except requests.RequestException as exc:
            raise ProgrammeError(f"{parts.scheme}://{parts.netloc} could not be reached: {type(exc).__name__}") from None

    def get_json(self, url: str) -> dict:
        response = self._request("GET", url, stream=True)
        with response:
            _check(response, url)
            body = _read_bounded(response, MAX_INDEX_BYTES, url)
        try:
            data = json.loads(body)
        except ValueError:
            raise ProgrammeError(f"{url} did not answer with JSON") from None
        if not isinstance(data, dict):
            raise ProgrammeError(f"{url} answered JSON that is not an object")
        return data

    def download(self, url: str, to: Path, sha256: str | None = None) -> Path:
        """The file at `url`, written to `to` (through `to`.part, renamed when whole and, with `sha256`, matching)."""
        part = Path(str(to) + ".part")
        response = self._request("GET", url, stream=True)
        with response:
            _check(response, url)
            h, size = hashlib.sha256(), 0
            try:
                with open(part, "wb") as f:
                    for chunk in response.iter_content(_CHUNK):
                        size += len(chunk)
                        if size > MAX_BUNDLE_BYTES:
                            raise ProgrammeError(f"{url} sent more than {MAX_BUNDLE_BYTES:,} bytes: not a model bundle")
                        h.update(chunk)
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            except requests.RequestException as exc:
                part.unlink(missing_ok=True)
                raise ProgrammeError(f"the download from {url} broke off: {type(exc).__name__}") from None
            except BaseException:
                part.unlink(missing_ok=True)
                raise
        if sha256 and h.hexdigest() != sha256.lower():
            part.unlink(missing_ok=True)
            raise ProgrammeError(f"the file from {url} does not match the sha256 its index gives: damaged on its way")
        os.replace(part, to)
        return Path(to)

    def post_json(self, url: str, body: dict) -> int:
        response = self._request("POST", url, data=json.dumps(body, default=str).encode("utf-8"),
                                 headers={"Content-Type": "application/json"})
        with response:
            _check(response, url)
            return response.status_code


def _check(response: requests.Response, url: str) -> None:
    if not 200 <= response.status_code < 300:
        raise ProgrammeError(f"{url} answered HTTP {response.status_code} {response.reason or ''}".rstrip())


def _read_bounded(response: requests.Response, limit: int, url: str) -> bytes:
    body = b""
    try:
        for chunk in response.iter_content(8192):
            body += chunk
            if len(body) > limit:
                raise ProgrammeError(f"{url} answered more than {limit:,} bytes: not a release index")
    except requests.RequestException as exc:
        raise ProgrammeError(f"the answer from {url} broke off: {type(exc).__name__}") from None
    return body
