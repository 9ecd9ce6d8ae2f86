"""Sync against real servers on 127.0.0.1 that answer badly on the wire: a Retry-After no clock can hold, an
answer trickled a byte at a time, a private CA while the environment names another, and a PACS that echoes
the unit's credentials back. No crash, no hang, the configured CA, and no credential stored or logged."""
from __future__ import annotations

import base64
import datetime as dt
import email.utils
import ipaddress
import json
import logging
import math
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from device.config import Config, SyncConfig
from device.lab.sync_trials import add_visits, sample_eyes
from device.outbox.dicomweb import REJECT, RETRY, DicomWebClient, DicomWebError, _retry_after, redact
from device.outbox.sync import SyncConfigError, client_from_config, retry_delay, run_sync
from device.visits.visitlog import VisitLog

USERNAME, PASSWORD, TOKEN = "unit-7", 'Pa55/wörd+"ünïcode', "tok.EN-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def eyes(shared_data):
    return sample_eyes(shared_data, 2)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 whose every request is answered by `answer(handler, body)`."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler, bytes], None], tls: ssl.SSLContext | None = None):
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer(self, body)

            do_GET = do_POST = _any

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "text/plain",
           headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _tiny_dicom() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _due_in(item: dict, now: dt.datetime) -> float:
    return (dt.datetime.fromisoformat(item["next_attempt_at"]) - now).total_seconds()


# -- 2: Retry-After ---------------------------------------------------------------------------------------
def _http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds_from_now),
                                       usegmt=True)


@pytest.mark.parametrize("header, expected", [
    ("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("1e9", 1e9), ("inf", math.inf), ("9" * 400, math.inf),
    ("-5", 0.0), ("nan", None), ("", None), ("soon", None), ("12 minutes", None), ("Wed, 99 Foo 2025 07:28:00 GMT", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: now
])
def test_retry_after_is_read_without_ever_raising(header, expected):
    response = requests.Response()
    response.headers["Retry-After"] = header
    assert _retry_after(response) == expected


def test_retry_after_as_an_http_date_counts_from_now():
    response = requests.Response()
    response.headers["Retry-After"] = _http_date(600)
    assert _retry_after(response) == pytest.approx(600, abs=3)
    response.headers["Retry-After"] = "Fri, 31 Dec 9999 23:59:59 GMT"
    assert _retry_after(response) > 2e11


def test_retry_delay_is_always_finite_and_capped():
    rng = random.Random(5)
    for retry_after in (math.inf, 1e300, 1e12, 1e9, math.nan, None, -1.0, 0.0):
        delay = retry_delay(1, retry_after, rng, max_retry_after_s=600)
        assert math.isfinite(delay) and 0 <= delay <= 600
    assert retry_delay(1, 1e9, rng, max_retry_after_s=600) == 600
    assert retry_delay(1, 300, rng, max_retry_after_s=600) == 300
    assert retry_delay(1, math.inf, rng) == 3600  # the default cap: [sync] max_retry_after_s


@pytest.mark.parametrize("header, waits", [
    ("inf", 600), ("1e12", 600), ("1e9", 600), ("9" * 40, 600), ("Fri, 31 Dec 9999 23:59:59 GMT", 600),
    ("300", 300), (None, 30), ("nan", 30), ("-1", 30), ("after lunch", 30), ("", 30),
])
def test_sync_once_survives_any_retry_after_and_waits_at_most_the_configured_cap(tmp_path, eyes, header, waits):
    """`sync --once` against a PACS that answers 503 with this Retry-After: the run ends normally, and the item
    waits the Retry-After (at most [sync] max_retry_after_s) or, for a value that says nothing, its backoff."""
    server = Server(lambda h, _: _reply(h, 503, b"busy", headers={} if header is None else {"Retry-After": header}))
    cfg = Config(data_dir=tmp_path / "unit", device_id="GSE-TEST",
                 sync=SyncConfig(url=server.url, timeout_s=5, max_retry_after_s=600))
    try:
        with VisitLog(cfg.data_dir) as unit:
            add_visits(unit, eyes, 1, random.Random(2))
        before = dt.datetime.now(dt.timezone.utc)
        out = run_sync(cfg, once=True)  # raised OverflowError for inf and 1e12
        after = dt.datetime.now(dt.timezone.utc)
    finally:
        server.close()
    assert (out["runs"], out["attempted"], out["failed"]) == (1, 1, 1) and "unavailable" in out["last"]["stopped"]
    with VisitLog(cfg.data_dir) as unit:
        first = unit.outbox_items()[0]
    assert first["status"] == "pending"
    if waits == 30:  # the first backoff: up to 30 s
        assert 0 <= _due_in(first, before) <= 30 + (after - before).total_seconds()
    else:
        assert waits - 1 <= _due_in(first, before) <= waits + (after - before).total_seconds() + 1


def test_a_retry_after_cap_that_cannot_work_is_named(tmp_path):
    for bad in (0.0, -5.0, math.inf, math.nan):
        cfg = Config(data_dir=tmp_path / "unit", sync=SyncConfig(url="http://127.0.0.1:9/dicom-web", max_retry_after_s=bad))
        with pytest.raises(SyncConfigError, match="max_retry_after_s must be a positive number"):
            run_sync(cfg, once=True)


def test_the_retry_after_cap_is_read_from_the_configuration_file(tmp_path, monkeypatch):
    monkeypatch.delenv("GLAUCOSCREEN_DATA_DIR", raising=False)
    (tmp_path / "unit.toml").write_text(f'data_dir = "{tmp_path / "unit"}"\n[sync]\nmax_retry_after_s = 900\ndeadline_s = 45\n')
    cfg = Config.load(tmp_path / "unit.toml")
    assert (cfg.sync.max_retry_after_s, cfg.sync.deadline_s) == (900.0, 45.0)
    assert SyncConfig().max_retry_after_s == 3600.0  # an hour unless the file says otherwise


# -- 6: a total deadline per request ----------------------------------------------------------------------
class Trickler:
    """A raw socket server on 127.0.0.1 that reads each request whole and then trickles its answer one byte
    every 0.2 s: from the status line ("head") or after whole headers ("body"); it gives up after `give_up_s`."""

    def __init__(self, where: str, give_up_s: float = 20.0):
        self.where, self.give_up_s = where, give_up_s
        self.closing = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/dicom-web"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: 500\r\n\r\n"
            if self.where == "body":
                conn.sendall(answer)
                answer = b"[" + b" " * 498 + b"]"
            ends = time.monotonic() + self.give_up_s
            for byte in answer:
                if self.closing.is_set() or time.monotonic() > ends:
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return  # the client hung up: what the deadline is for
                time.sleep(0.2)

    def close(self) -> None:
        self.closing.set()
        self.sock.close()


@pytest.mark.parametrize("where", ["head", "body"])
def test_a_pacs_trickling_its_answer_is_cut_off_at_the_deadline(where):
    """Each byte comes well within the 1 s read timeout, so only a deadline for the whole request ends it."""
    server = Trickler(where)
    client = DicomWebClient(server.url, timeout=1, deadline=2)
    try:
        started = time.monotonic()
        result = client.store([_tiny_dicom()])
        took = time.monotonic() - started
        assert (result.outcome, result.status) == (RETRY, None)
        assert "did not finish the request within 2 s" in result.reason
        assert 1.9 <= took < 4, took
        started = time.monotonic()
        with pytest.raises(DicomWebError, match="within 2 s") as asked:  # QIDO-RS has the same deadline
            client.instances("1.2.3")
        assert asked.value.retryable and time.monotonic() - started < 4
    finally:
        client.close()
        server.close()


def test_the_deadline_comes_from_the_settings_and_lets_a_prompt_answer_through(tmp_path):
    server = Server(lambda h, _: _reply(h, 200, b"[]", "application/dicom+json"))
    try:
        client = client_from_config(SyncConfig(url=server.url, timeout_s=1, deadline_s=2))
        assert (client.timeout, client.deadline) == (1, 2)
        for _ in range(3):  # a kept-alive connection is watched on every request, and left alone after it
            assert client.instances("1.2.3") == []
        time.sleep(2.5)  # past the deadline of every request above: no timer may shut the pooled connection
        assert client.instances("1.2.3") == []
        client.close()
    finally:
        server.close()
    for bad in (0, -1, math.inf):
        with pytest.raises(SyncConfigError, match="deadline_s must be a positive number"):
            client_from_config(SyncConfig(url=server.url, deadline_s=bad))


# -- 7: the configured CA wins over the environment ------------------------------------------------------
def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _server_cert(ca_key, ca_cert: x509.Certificate) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@pytest.fixture
def tls_pacs(tmp_path):
    """A PACS on https://127.0.0.1 whose certificate a private CA signed (pacs-ca.pem), and another CA that did
    not sign it (other-ca.pem). The PACS answers every store 403, which proves the TLS handshake went through."""
    ca_key, ca_cert = _ca("Clinic private CA")
    _, other_cert = _ca("Someone else's CA")
    key, cert = _server_cert(ca_key, ca_cert)
    (tmp_path / "pacs-ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "other-ca.pem").write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "server.pem")
    server = Server(lambda h, _: _reply(h, 403, b"this unit may not store"), tls=context)
    yield server, tmp_path / "pacs-ca.pem", tmp_path / "other-ca.pem"
    server.close()


def test_the_configured_ca_wins_over_requests_ca_bundle_and_curl_ca_bundle(tls_pacs, monkeypatch):
    server, pacs_ca, other_ca = tls_pacs
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(other_ca))
    client = client_from_config(SyncConfig(url=server.url, ca_file=str(pacs_ca), timeout_s=5))
    result = client.store([_tiny_dicom()])
    assert (result.outcome, result.status) == (REJECT, 403), result.reason  # reached: the private CA was used
    with pytest.raises(DicomWebError, match="HTTP 403"):
        client.instances("1.2.3")
    client.close()


def test_the_environment_cannot_make_the_unit_trust_a_ca_it_was_not_given(tls_pacs, monkeypatch):
    """The other way round: the environment names the PACS's CA, the settings another; the settings win."""
    server, pacs_ca, other_ca = tls_pacs
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pacs_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pacs_ca))
    client = client_from_config(SyncConfig(url=server.url, ca_file=str(other_ca), timeout_s=5))
    result = client.store([_tiny_dicom()])
    assert (result.outcome, result.status) == (RETRY, None)
    assert "CERTIFICATE_VERIFY_FAILED" in result.reason
    with pytest.raises(DicomWebError, match="CERTIFICATE_VERIFY_FAILED"):
        client.instances("1.2.3")
    client.close()


def test_without_a_configured_ca_the_environment_still_applies(tls_pacs, monkeypatch):
    server, pacs_ca, _ = tls_pacs
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pacs_ca))
    client = client_from_config(SyncConfig(url=server.url, timeout_s=5))
    assert client.store([_tiny_dicom()]).status == 403
    client.close()


# -- 8: credentials echoed by the PACS are never stored or logged ----------------------------------------
def _echo(status: int) -> Callable[[BaseHTTPRequestHandler, bytes], None]:
    """A PACS whose error page quotes the request's headers: raw, decoded, as JSON and inside a URL."""
    def answer(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
        authorization = handler.headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        decoded = base64.b64decode(value).decode("latin-1") if scheme == "Basic" else value
        text = (f"Authorization: {authorization}\nyou sent {scheme} {value}; that is {decoded}\n"
                f"headers: {json.dumps(dict(handler.headers))}\nheaders: {json.dumps(dict(handler.headers), ensure_ascii=False)}\n"
                f"retry at https://{decoded}@pacs.example.org/dicom-web or ftp://x:{value}@h/\n")
        _reply(handler, status, text.encode("utf-8"), "text/plain; charset=utf-8")
    return answer


def _failed_sop(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
    """A 200 whose Failed SOP Sequence names the instance by the Authorization header."""
    authorization = handler.headers.get("Authorization", "")
    body = {"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [authorization]},
                                                 "00081197": {"vr": "US", "Value": [0xC000]}}]}}
    _reply(handler, 200, json.dumps(body).encode(), "application/dicom+json")


def _secrets() -> list[str]:
    pair = f"{USERNAME}:{PASSWORD}"
    return [PASSWORD, TOKEN, base64.b64encode(pair.encode("latin-1")).decode(), json.dumps(PASSWORD)[1:-1],
            json.dumps(PASSWORD, ensure_ascii=False)[1:-1], "ünïcode", "Pa55/w"]


@pytest.mark.parametrize("answer, credential", [
    (_echo(500), "password"), (_echo(503), "token"),  # retried: the error waits in the outbox and the log
    (_echo(400), "password"), (_echo(401), "token"),  # quarantined, or held as the unit's own fault
    (_failed_sop, "password"), (_failed_sop, "token"),
], ids=["500-password", "503-token", "400-password", "401-token", "failed-sop-password", "failed-sop-token"])
def test_credentials_a_pacs_echoes_are_never_stored_or_logged(tmp_path, eyes, caplog, answer, credential):
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD if credential == "password" else TOKEN)
    secret.chmod(0o600)
    server = Server(answer)
    settings = {"username": USERNAME, "password_file": str(secret)} if credential == "password" else {"token_file": str(secret)}
    cfg = Config(data_dir=tmp_path / "unit", device_id="GSE-TEST", sync=SyncConfig(url=server.url, timeout_s=5, **settings))
    try:
        with VisitLog(cfg.data_dir) as unit:
            add_visits(unit, eyes, 1, random.Random(3))
        out = run_sync(cfg, once=True)
    finally:
        server.close()
    assert out["attempted"] >= 1 and out["sent"] == 0
    with VisitLog(cfg.data_dir) as unit:
        items = unit.outbox_items()
        attempts = [a for i in items for a in unit.outbox_attempts(i["id"])]
    stored = json.dumps([items, attempts], ensure_ascii=False)
    everything = stored + caplog.text + json.dumps(out, ensure_ascii=False)
    assert "[redacted]" in stored  # the echo did reach the outbox, scrubbed
    for leaked in _secrets():
        assert leaked not in everything, leaked


def test_a_credential_in_a_url_or_a_header_is_scrubbed_from_any_text():
    assert redact("cannot reach http://proxy-user:s3cret@proxy.example.org:3128/ now") == \
        "cannot reach http://[redacted]@proxy.example.org:3128/ now"
    assert redact("got Authorization: Basic dTpw\nand bearer abc.def-ghi") == "got Authorization: [redacted]\nand bearer [redacted]"
    assert redact('{"authorization": "Token xyz", "host": "pacs"}') == '{"authorization": "[redacted]", "host": "pacs"}'
    assert redact("HTTP 503: the PACS is unavailable") == "HTTP 503: the PACS is unavailable"
    with pytest.raises(ValueError) as refused:
        DicomWebClient("ftp://sync:s3cret-pw@pacs.example.org/dicom-web")
    assert "s3cret-pw" not in str(refused.value)
    client = DicomWebClient("https://pacs.example.org/dicom-web", username=USERNAME, password=PASSWORD)
    assert PASSWORD not in client.redact(f"echo {PASSWORD} and {USERNAME}:{PASSWORD}")


def test_a_secret_kept_in_the_settings_file_is_never_in_the_url_error(tmp_path):
    with pytest.raises(SyncConfigError) as refused:
        client_from_config(SyncConfig(), target="pacs.example.org:s3cret-pw@host")
    assert "s3cret-pw" not in str(refused.value)


# -- the Host header: a PACS behind a name-based proxy on its own port ----------------------------------
def test_every_request_names_the_pacs_host_with_its_port():
    """dicomweb-client writes Host without the port (RFC 9110 7.2 wants it when it is not the scheme's
    default), which a proxy routing by Host sends nowhere; the unit's session lets requests write it."""
    seen: list[str] = []

    def answer(handler: BaseHTTPRequestHandler, _body: bytes) -> None:
        seen.append(handler.headers.get("Host", ""))
        _reply(handler, 200, b"[]", "application/dicom+json")

    server = Server(answer)
    client = DicomWebClient(server.url, timeout=5)
    try:
        client.store([_tiny_dicom()])
        client.instances("1.2.3")
    finally:
        client.close()
        server.close()
    assert seen == [f"127.0.0.1:{server.port}"] * 2
