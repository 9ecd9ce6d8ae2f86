"""Every server the tests start listens on 127.0.0.1 only (issue 17, item 13): Orthanc, which cannot
choose its HTTP address, is held to loopback by a preloaded bind, refuses remote clients and keeps its
DICOM port closed; the Python servers
bind loopback, and a bind to any other address fails the test that tries it (tests/loopback.py)."""
from __future__ import annotations

import ipaddress
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import waitress

from tests.loopback import NotLoopback, _checked_bind, is_loopback, listening

pytest_plugins = ["tests.orthanc"]  # imported as a plugin (its asserts rewritten), so its classes are taken inside the tests


def test_the_orthanc_helper_refuses_remote_clients_and_keeps_dicom_off(tmp_path):
    from tests.orthanc import OrthancServer

    (tmp_path / "plain").mkdir()
    (tmp_path / "dicom").mkdir()
    plain = OrthancServer(tmp_path / "plain").config
    assert plain["RemoteAccessAllowed"] is False
    assert plain["DicomServerEnabled"] is False  # Orthanc's default is on, listening on every interface
    assert "DicomPort" not in plain
    dicom = OrthancServer(tmp_path / "dicom", dicom=True)
    assert dicom.config["DicomServerEnabled"] is True and dicom.config["DicomPort"] == dicom.dicom_port
    assert dicom.config["RemoteAccessAllowed"] is False


@pytest.mark.orthanc
def test_a_started_orthanc_listens_on_its_http_port_only_and_on_loopback_only(orthanc):
    """The HTTP port is its one socket, on 127.0.0.1 (Orthanc itself would take every interface: the
    preloaded tests/loopback_bind.c moves it); no DICOM port."""
    assert orthanc.pid is not None
    assert listening(orthanc.pid) == [("127.0.0.1", orthanc.http_port)]


def test_the_fault_proxy_listens_on_loopback():
    from tests.orthanc import FaultProxy

    proxy = FaultProxy("http://127.0.0.1:9/dicom-web").start()
    try:
        mine = [address for address, port in listening(os.getpid()) if port == proxy.port]
        assert mine and all(is_loopback(a) for a in mine), mine
    finally:
        proxy.stop()


def test_a_loopback_bind_is_seen_listening_there():
    """The check the Orthanc and `glaucoscreen run` tests make does see what a process listens on (a
    control that opened a port to the network would defeat the point)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert ("127.0.0.1", s.getsockname()[1]) in listening(os.getpid())


ALL_INTERFACES = str(ipaddress.ip_address(socket.INADDR_ANY))  # what the guard must stop


@pytest.fixture
def no_real_bind(monkeypatch):
    """The guard in front of a bind that never reaches the network: were the guard to let an address
    through, the test fails on this stand-in instead of opening a port on every interface."""
    def refuse(sock, address):
        raise AssertionError(f"the guard let {address!r} through to a real bind")

    monkeypatch.setattr(socket.socket, "bind", _checked_bind(refuse))


@pytest.mark.parametrize("family, host", [(socket.AF_INET, ALL_INTERFACES), (socket.AF_INET, ""),
                                          (socket.AF_INET6, "::"), (socket.AF_INET, "192.0.2.1")])
def test_a_test_binding_beyond_loopback_fails_at_once(no_real_bind, family, host):
    with socket.socket(family) as s, pytest.raises(NotLoopback, match="may bind only 127.0.0.1"):
        s.bind((host, 0))


def test_the_test_servers_cannot_be_opened_beyond_loopback(no_real_bind):
    with pytest.raises(NotLoopback):
        ThreadingHTTPServer((ALL_INTERFACES, 0), BaseHTTPRequestHandler)
    with pytest.raises(NotLoopback):
        waitress.create_server(lambda environ, start_response: [], host=ALL_INTERFACES, port=0)
