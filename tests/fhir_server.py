"""A small FHIR server on 127.0.0.1 for the tests, since no FHIR server installs here: it takes transaction
Bundles at its base URL, validates each with fhir.resources (R4B, as the unit builds them), and applies the
conditional-create rules of FHIR's RESTful API: an entry whose `ifNoneExist` (identifier=system|value, with
FHIR's escapes) matches one resource is not created again (200), matches none is created (201), matches more
than one is refused (412). References to another entry's fullUrl become references to the resource it made
or found. It answers a transaction-response Bundle, or an OperationOutcome with 400 for what does not validate.

`fail_next(n, status)` makes it answer the next n requests with that status instead, as a server that is down.
"""
from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError


def _unescape_token(token: str) -> tuple[str, str]:
    """system|value of a token search parameter, undoing FHIR's backslash escapes in the value."""
    parts = re.split(r"(?<!\\)\|", token, maxsplit=1)
    if len(parts) != 2:
        raise ValueError(f"not a system|value token: {token!r}")
    system, value = parts
    return system, re.sub(r"\\(.)", r"\1", value)


class FhirServer:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, dict]] = {}  # type -> id -> resource
        self.requests = 0
        self.answers: list[int] = []
        self._made = 0  # ids handed out; a transaction refused half-way (412) leaves gaps, as servers do
        self._failures: list[int] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = server._answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> "FhirServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fail_next(self, n: int, status: int) -> None:
        with self._lock:
            self._failures = [status] * n

    def count(self, resource_type: str) -> int:
        return len(self.resources.get(resource_type, {}))

    def _outcome(self, status: int, text: str) -> tuple[int, dict]:
        self.answers.append(status)
        return status, {"resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}]}

    def _answer(self, path: str, body: bytes) -> tuple[int, dict]:
        with self._lock:
            self.requests += 1
            if self._failures:
                return self._outcome(self._failures.pop(), "the server is not taking requests now")
            if path.rstrip("/") != "/fhir":
                return self._outcome(404, f"no endpoint at {path}")
            try:
                bundle = Bundle.model_validate_json(body)
            except ValidationError as exc:
                return self._outcome(400, f"not a valid Bundle: {exc.errors()[0]['msg']}")
            if bundle.type != "transaction":
                return self._outcome(400, "only transaction bundles are taken here")
            raw = json.loads(body)
            found: dict[str, str] = {}  # fullUrl -> Type/id
            results = []
            for entry in raw["entry"]:
                resource, request = entry["resource"], entry["request"]
                kind = resource["resourceType"]
                matches = self._matches(kind, request.get("ifNoneExist"))
                if len(matches) > 1:
                    return self._outcome(412, f"{request['ifNoneExist']} matches {len(matches)} {kind} resources")
                if matches:
                    found[entry["fullUrl"]] = f"{kind}/{matches[0]}"
                    results.append("200 OK")
                else:
                    self._made += 1
                    found[entry["fullUrl"]] = f"{kind}/{self._made}"
                    results.append("201 Created")
            for entry, outcome in zip(raw["entry"], results):
                if outcome.startswith("201"):
                    kind, new_id = found[entry["fullUrl"]].split("/")
                    text = json.dumps(entry["resource"])
                    for full_url, ref in found.items():
                        text = text.replace(json.dumps(full_url), json.dumps(ref))
                    self.resources.setdefault(kind, {})[new_id] = {**json.loads(text), "id": new_id}
            self.answers.append(200)
            return 200, {"resourceType": "Bundle", "type": "transaction-response",
                         "entry": [{"response": {"status": outcome, "location": found[e["fullUrl"]]}}
                                   for e, outcome in zip(raw["entry"], results)]}

    def _matches(self, kind: str, query: str | None) -> list[str]:
        if not query:
            return []
        token = parse_qs(query, keep_blank_values=True).get("identifier", [""])[0]
        system, value = _unescape_token(token)
        return [rid for rid, r in self.resources.get(kind, {}).items()
                if any(i.get("system") == system and i.get("value") == value for i in r.get("identifier", []))]
