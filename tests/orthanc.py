"""A real Orthanc PACS (with its DICOMweb plugin) for the tests, and a proxy that misbehaves on cue.

Orthanc runs with a free port, its own temporary storage and a generated config with HTTP
authentication on, as a clinic's server would. Orthanc 1.10 cannot be told which address to listen on
(its HTTP server binds every interface), so it starts with a small library preloaded
(tests/loopback_bind.c, built once with the system's C compiler) that turns a bind to every interface
into a bind to 127.0.0.1; it also refuses every client but this machine (`RemoteAccessAllowed` false),
and its DICOM server, which no test uses, is off unless one asks for it (`dicom=True`);
tests/test_loopback_only.py checks all three. The suite starts it once (`orthanc_server`,
session scope); `orthanc` hands each test an empty one. Orthanc comes from the Debian packages
`orthanc` and `orthanc-dicomweb` (`./install.sh --dev` installs them); without it the fixture fails
rather than skips, since the sync path would otherwise go untested.

`FaultProxy` sits between a client and Orthanc and, for the next N requests, answers an error
status, hangs past the client's timeout, or drops the connection; after that it passes through.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

ORTHANC_BINARY = shutil.which("Orthanc") or "/usr/sbin/Orthanc"  # Debian puts it in sbin
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # package orthanc-dicomweb
USERNAME, PASSWORD = "sync-test", "not-a-real-secret"


LOOPBACK_BIND_SOURCE = Path(__file__).with_name("loopback_bind.c")
_loopback_library: Path | None = None


def loopback_bind_library() -> Path:
    """The preload library that keeps Orthanc on 127.0.0.1, compiled once per process into a temporary folder."""
    global _loopback_library
    if _loopback_library is None or not _loopback_library.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise RuntimeError("a C compiler (Debian package gcc) is needed to keep the test Orthanc on 127.0.0.1")
        library = Path(tempfile.mkdtemp(prefix="glaucoscreen-loopback-")) / "loopback_bind.so"
        subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(LOOPBACK_BIND_SOURCE), "-ldl"],
                       check=True, capture_output=True)
        _loopback_library = library
    return _loopback_library


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """One Orthanc process with its storage folder; stop and restart keep the stored studies."""

    def __init__(self, workdir: Path, dicom: bool = False):
        self.workdir = workdir
        self.http_port = free_port()
        self.dicom_port = None  # the DICOM server is off: nothing listens for DICOM
        if dicom:
            self.dicom_port = free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
        self.username, self.password = USERNAME, PASSWORD
        self.rest = f"http://127.0.0.1:{self.http_port}"
        self.url = f"{self.rest}/dicom-web"
        self._process: subprocess.Popen | None = None
        self._config = workdir / "orthanc.json"
        self._config.write_text(json.dumps({
            "Name": "GlaucoScreen test PACS",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "HttpPort": self.http_port,
            "DicomServerEnabled": dicom,
            **({"DicomPort": self.dicom_port, "DicomAet": "GSTEST"} if dicom else {}),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USERNAME: PASSWORD},
            "StableAge": 1,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "HttpThreadsCount": 8,
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Ssl": False},
        }, indent=2))

    @property
    def auth(self) -> tuple[str, str]:
        return self.username, self.password

    @property
    def config(self) -> dict:
        """The configuration this Orthanc runs with, as written."""
        return json.loads(self._config.read_text())

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process is not None else None

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.workdir / "orthanc.log", "ab")
        self._process = subprocess.Popen([ORTHANC_BINARY, str(self._config)], stdout=self._log,
                                         stderr=subprocess.STDOUT, cwd=self.workdir,
                                         env={**os.environ, "LD_PRELOAD": str(loopback_bind_library())})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start (code {self._process.returncode}):\n{self.log_tail()}")
            try:
                if requests.get(f"{self.rest}/system", auth=self.auth, timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer /system within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, graceful: bool = False) -> None:
        """Killed by default, like a crash or a power cut (and 3 s faster than Orthanc's own
        shutdown); what was stored survives either way."""
        if self._process is not None and self._process.poll() is None:
            if graceful:
                self._process.terminate()
                try:
                    self._process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self._process.kill()
            else:
                self._process.kill()
            self._process.wait()
        self._process = None
        if getattr(self, "_log", None):
            self._log.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _get(self, path: str):
        r = requests.get(f"{self.rest}{path}", auth=self.auth, timeout=10)
        r.raise_for_status()
        return r.json()

    def studies(self) -> list[str]:
        """StudyInstanceUIDs of every stored study."""
        return sorted(self._get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in self._get("/studies"))

    def instances_count(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def clear(self) -> None:
        for study in self._get("/studies"):
            requests.delete(f"{self.rest}/studies/{study}", auth=self.auth, timeout=10).raise_for_status()


@pytest.fixture(scope="session")
def orthanc_server():
    """The suite's one Orthanc; fails (never skips) where Orthanc is not installed."""
    missing = [p for p in (ORTHANC_BINARY, DICOMWEB_PLUGIN) if not Path(p).exists()]
    if missing:
        pytest.fail(f"Orthanc with its DICOMweb plugin is needed for the sync tests but {', '.join(missing)} "
                    f"is missing: run ./install.sh --dev (Debian packages orthanc and orthanc-dicomweb)")
    workdir = Path(tempfile.mkdtemp(prefix="orthanc-test-"))
    server = OrthancServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def orthanc(orthanc_server):
    """The suite's Orthanc, running and empty, whatever the test before did to it."""
    if not orthanc_server.running:
        orthanc_server.start()
    orthanc_server.clear()
    return orthanc_server


# --- Fault injection ---------------------------------------------------------------------------

@dataclass
class _Fault:
    kind: str  # "status", "hang" or "drop"
    status: int = 0
    remaining: int = 0


class FaultProxy:
    """A loopback HTTP proxy to one upstream server that misbehaves for the next N requests.

    `fail_next(n, "500")` (any status code), `fail_next(n, "hang")` (holds the request for
    `hang_seconds`, then closes without answering) or `fail_next(n, "drop")` (closes at once).
    """

    HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                   "proxy-authorization", "proxy-authenticate", "host", "content-length"}

    def __init__(self, upstream: str, hang_seconds: float = 10.0):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.hang_seconds = hang_seconds
        self.requests_seen = 0
        self._fault = _Fault("none")
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def url_for(self, upstream_url: str) -> str:
        """The same URL, reached through the proxy."""
        parts = urlsplit(upstream_url)
        return parts._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    def fail_next(self, n: int, fault: str) -> None:
        with self._lock:
            if fault in ("hang", "drop"):
                self._fault = _Fault(fault, remaining=n)
            else:
                self._fault = _Fault("status", status=int(fault), remaining=n)

    def _take_fault(self) -> _Fault | None:
        with self._lock:
            self.requests_seen += 1
            if self._fault.remaining <= 0:
                return None
            self._fault.remaining -= 1
            return _Fault(self._fault.kind, self._fault.status)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # releases hanging handlers
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: the tests report what matters
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._take_fault()
                if fault is not None and fault.kind == "hang":
                    proxy._closing.wait(proxy.hang_seconds)
                    self.close_connection = True
                    return
                if fault is not None and fault.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault is not None:
                    text = f"injected fault {fault.status}".encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP_HEADERS}
                    headers["Content-Length"] = str(len(body))
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for k, v in answer.getheaders():
                    if k.lower() not in proxy.HOP_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

        return Handler


@pytest.fixture
def fault_proxy(orthanc):
    """A FaultProxy in front of the (empty) test Orthanc; hangs last 5 s unless a test says otherwise."""
    proxy = FaultProxy(orthanc.rest, hang_seconds=5.0).start()
    yield proxy
    proxy.stop()
