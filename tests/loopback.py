"""Every server the tests start listens on 127.0.0.1 only, so running the suite on a laptop in a
clinic's or a café's network opens nothing to it (issue 17, item 13).

Two holds: `loopback_binds_only` makes any socket the test process binds to another address fail
at once with the address named (conftest.py keeps it on for the whole session: waitress, the
http.server helpers, anything added later); `listening` reads from /proc which TCP addresses a
process (Orthanc, `glaucoscreen run`) listens on, for the servers that run as processes of their own.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from pathlib import Path
from typing import Iterator

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class NotLoopback(OSError):
    """A test tried to listen on an address other computers can reach."""


def _checked_bind(original):
    def bind(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in LOOPBACK_HOSTS:
                raise NotLoopback(f"a test may bind only 127.0.0.1, not {host or '(all interfaces)'!r} "
                                  f"(port {address[1]}): every server the tests start stays on this machine")
        return original(self, address)

    bind.__wrapped__ = original
    return bind


@contextlib.contextmanager
def loopback_binds_only() -> Iterator[None]:
    """While open, binding an IPv4/IPv6 socket to anything but loopback raises NotLoopback."""
    original = socket.socket.bind
    socket.socket.bind = _checked_bind(original)  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.bind = original  # type: ignore[method-assign]


def _listening_by_inode() -> dict[str, tuple[str, int]]:
    """Every listening TCP socket of this network namespace: inode -> (address, port)."""
    found = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        table = Path("/proc/net") / name
        if not table.exists():
            continue
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A":  # LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            # /proc/net/tcp{,6} print the address as 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(raw) if family == socket.AF_INET6 else ipaddress.IPv4Address(raw)
            found[inode] = (str(address), int(hex_port, 16))
    return found


def listening(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs the process `pid` listens on for TCP, sorted."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    table = _listening_by_inode()
    return sorted(table[i] for i in inodes if i in table)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
