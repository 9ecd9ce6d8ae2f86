"""Health-worker accounts: who may sign in to the kiosk, with a PIN each, and who may manage the unit.

A PIN is short, so its hash alone would not stop someone who copied the file from finding it: the
file is created readable by its owner only, each PIN is hashed with scrypt (memory-hard, so a
stolen file costs real work per guess) and its own random salt, and at the kiosk an account locks
after `MAX_FAILURES` wrong PINs in a row, for `FIRST_LOCK_S` seconds and twice as long each time
it locks again without a correct PIN in between. A PIN is never logged or printed.

Its own small SQLite file (``accounts.db`` beside the visit log), because accounts are about the
unit's staff, not its patients: they are never synced and are managed apart from the visit log.
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import datetime as dt
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

from device.visits.datadir import DataDir

__all__ = ["Accounts", "AccountLocked", "MAX_FAILURES", "FIRST_LOCK_S", "accounts_path", "check_pin",
           "add_user_parser", "user_add_command", "user_list_command", "user_remove_command"]

MAX_FAILURES = 5          # wrong PINs in a row before the account locks
FIRST_LOCK_S = 30.0       # the first lock; each further lock doubles
MAX_LOCK_S = 3600.0       # a worker locked out for longer than an hour cannot screen; an admin unlocks instead
PIN_DIGITS = (4, 8)
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# scrypt cost: ~16 MiB and ~50 ms per PIN on a Pi 5; a sign-in waits that long once, a guesser per guess
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_BUSY_TIMEOUT_S = 10.0


class AccountLocked(Exception):
    """Too many wrong PINs: the account is refused, even with the right PIN, for `remaining_s` more seconds."""

    def __init__(self, username: str, remaining_s: float):
        self.username = username
        self.remaining_s = max(0.0, remaining_s)
        super().__init__(f"{username} is locked after {MAX_FAILURES} wrong PINs: try again in {describe_wait(self.remaining_s)}")


def describe_wait(seconds: float) -> str:
    """A wait in words a worker reads at a glance ("45 seconds", "2 minutes")."""
    seconds = max(1, int(-(-seconds // 1)))
    if seconds < 90:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"{minutes} minutes"


def check_pin(pin: str) -> str:
    """The PIN if it is 4 to 8 digits; otherwise a ValueError that says what a PIN must be."""
    lo, hi = PIN_DIGITS
    if not isinstance(pin, str) or not (pin.isascii() and pin.isdigit()) or not lo <= len(pin) <= hi:
        raise ValueError(f"a PIN is {lo} to {hi} digits (numbers only)")
    return pin


def check_username(username: str) -> str:
    if not isinstance(username, str) or not _USERNAME.fullmatch(username.strip()):
        raise ValueError("a user name is 1 to 32 letters, digits, dots, dashes or underscores, starting with a letter or digit")
    return username.strip()


def _hash_pin(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, dklen=32, maxmem=64 * 2**20, **_SCRYPT)


def _create_v1(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE users (
                    username TEXT PRIMARY KEY COLLATE NOCASE,
                    pin_hash BLOB NOT NULL,
                    salt BLOB NOT NULL,
                    admin INTEGER NOT NULL DEFAULT 0,
                    created_at TEXT NOT NULL,
                    failures INTEGER NOT NULL DEFAULT 0,
                    locks INTEGER NOT NULL DEFAULT 0,
                    locked_until REAL NOT NULL DEFAULT 0,
                    last_sign_in TEXT)""")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1]   # schema version N = first N applied


class Accounts:
    def __init__(self, db_path: Path, *, clock: Callable[[], float] = time.time):
        """Open (creating if needed) the accounts file. `clock` is wall time in seconds: locks survive a restart."""
        self.db_path = Path(db_path)
        self._clock = clock
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        if not self.db_path.exists():
            os.close(os.open(self.db_path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._connect() as db:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
                raise RuntimeError(f"the file system under {self.db_path.parent} cannot hold a write-ahead-log SQLite database")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.db_path} has schema version {version}, newer than this software "
                                   f"({len(MIGRATIONS)}): update the unit's software")
            for number, migrate in enumerate(MIGRATIONS[version:], start=version + 1):
                with db:
                    migrate(db)
                    db.execute(f"PRAGMA user_version = {number}")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection per use: the kiosk's threads each sign someone in now and then, never often."""
        db = sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            yield db
        finally:
            db.close()

    @property
    def schema_version(self) -> int:
        with self._connect() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def add(self, username: str, pin: str, admin: bool = False) -> None:
        username, pin = check_username(username), check_pin(pin)
        salt = secrets.token_bytes(16)
        row = (username, _hash_pin(pin, salt), salt, int(bool(admin)), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        with self._connect() as db:
            try:
                db.execute("INSERT INTO users (username, pin_hash, salt, admin, created_at) VALUES (?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise ValueError(f"there is already a user called {username!r}") from None

    def set_pin(self, username: str, pin: str) -> None:
        """A new PIN (a worker who forgot theirs); clears any lock."""
        pin = check_pin(pin)
        salt = secrets.token_bytes(16)
        with self._connect() as db:
            cur = db.execute("UPDATE users SET pin_hash = ?, salt = ?, failures = 0, locks = 0, locked_until = 0 "
                             "WHERE username = ?", (_hash_pin(pin, salt), salt, username))
        if cur.rowcount == 0:
            raise LookupError(f"there is no user called {username!r}")

    def verify(self, username: str, pin: str) -> bool:
        """True for the right PIN. A wrong one counts toward the lock; the wrong PIN that locks the
        account, and any attempt while it is locked, raise AccountLocked with the time left."""
        now = self._clock()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # two tablets guessing at once still count every guess
            try:
                row = db.execute("SELECT username, pin_hash, salt, failures, locks, locked_until FROM users WHERE username = ?",
                                 (username,)).fetchone()
                if row is None:
                    _hash_pin("0000", b"\0" * 16)  # the same work as for a real user: timing does not tell who exists
                    db.execute("ROLLBACK")
                    return False
                name, pin_hash, salt, failures, locks, locked_until = row
                if locked_until > now:
                    db.execute("ROLLBACK")
                    raise AccountLocked(name, locked_until - now)
                ok = isinstance(pin, str) and hmac.compare_digest(_hash_pin(pin, salt), pin_hash)
                if ok:
                    db.execute("UPDATE users SET failures = 0, locks = 0, locked_until = 0, last_sign_in = ? WHERE username = ?",
                               (dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), name))
                    db.execute("COMMIT")
                    return True
                failures += 1
                lock_s = 0.0
                if failures >= MAX_FAILURES:
                    lock_s = min(MAX_LOCK_S, FIRST_LOCK_S * 2 ** locks)
                    db.execute("UPDATE users SET failures = 0, locks = locks + 1, locked_until = ? WHERE username = ?",
                               (now + lock_s, name))
                else:
                    db.execute("UPDATE users SET failures = ? WHERE username = ?", (failures, name))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        if lock_s:
            raise AccountLocked(name, lock_s)
        return False

    def attempts_left(self, username: str) -> int | None:
        """Wrong PINs still allowed before the account locks (None for an unknown user)."""
        user = self.get(username)
        return None if user is None else MAX_FAILURES - user["failures"]

    def unlock(self, username: str) -> None:
        with self._connect() as db:
            if db.execute("UPDATE users SET failures = 0, locks = 0, locked_until = 0 WHERE username = ?",
                          (username,)).rowcount == 0:
                raise LookupError(f"there is no user called {username!r}")

    def get(self, username: str) -> dict | None:
        rows = self._users("WHERE username = ?", (username,))
        return rows[0] if rows else None

    def list(self) -> list[dict]:
        return self._users("ORDER BY username COLLATE NOCASE")

    def _users(self, where: str, params: tuple = ()) -> builtins.list[dict]:  # `list` here is the method above
        now = self._clock()
        with self._connect() as db:
            rows = db.execute(f"SELECT username, admin, created_at, last_sign_in, failures, locked_until FROM users {where}",
                              params).fetchall()
        return [{"username": u, "admin": bool(a), "created_at": c, "last_sign_in": s, "failures": f,
                 "locked_for_s": max(0.0, until - now)} for u, a, c, s, f, until in rows]

    def remove(self, username: str) -> None:
        with self._connect() as db:
            if db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 0:
                raise LookupError(f"there is no user called {username!r}")

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM users").fetchone()[0]


# -- the `glaucoscreen user ...` commands --------------------------------------------------------

def accounts_path(data_dir: Path) -> Path:
    return DataDir(data_dir).accounts_db


def _open(args) -> Accounts:
    from device.config import Config

    cfg = Config.load(args.config, data_dir=getattr(args, "data_dir", None))
    return Accounts(DataDir(cfg.data_dir).accounts_db)


def _read_pin(args, stdin: TextIO, ask: Callable[[str], str]) -> str:
    if args.pin_stdin:
        return check_pin(stdin.readline().strip())
    pin = check_pin(ask(f"PIN for {args.name} (4-8 digits): "))
    if ask("The same PIN again: ") != pin:
        raise ValueError("the two PINs differ")
    return pin


def user_add_command(args, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
                     ask: Callable[[str], str] = getpass.getpass) -> int:
    """`glaucoscreen user add NAME [--admin] [--pin-stdin]`: the PIN is asked twice, unseen, or read from stdin."""
    try:
        check_username(args.name)
        pin = _read_pin(args, stdin or sys.stdin, ask)
        _open(args).add(args.name, pin, admin=args.admin)
    except ValueError as exc:
        print(f"glaucoscreen user add: {exc}", file=sys.stderr)
        return 2
    print(f"added {'admin ' if args.admin else ''}{args.name.strip()}; they can sign in at the kiosk now", file=stdout or sys.stdout)
    return 0


def user_list_command(args, *, stdout: TextIO | None = None) -> int:
    stdout = stdout or sys.stdout
    users = _open(args).list()
    if not users:
        print("no users yet: add the first with `glaucoscreen user add NAME --admin`", file=stdout)
    for u in users:
        notes = ["admin"] if u["admin"] else []
        if u["locked_for_s"]:
            notes.append(f"locked for {describe_wait(u['locked_for_s'])}")
        notes.append(f"last sign-in {u['last_sign_in'] or 'never'}")
        print(f"{u['username']:20s} {', '.join(notes)}", file=stdout)
    return 0


def user_remove_command(args, *, stdout: TextIO | None = None) -> int:
    try:
        _open(args).remove(args.name)
    except LookupError as exc:
        print(f"glaucoscreen user remove: {exc}", file=sys.stderr)
        return 1
    print(f"removed {args.name}", file=stdout or sys.stdout)
    return 0


def add_user_parser(sub: argparse._SubParsersAction) -> None:
    """Adds `user add|list|remove` to the `glaucoscreen` command's subparsers."""
    u = sub.add_parser("user", help="health-worker accounts for the kiosk")
    u.add_argument("--data-dir", type=Path)
    us = u.add_subparsers(dest="user_command", required=True)
    a = us.add_parser("add", help="add a health worker (asks for their PIN twice)")
    a.add_argument("name")
    a.add_argument("--admin", action="store_true", help="may add and remove users at the kiosk")
    a.add_argument("--pin-stdin", action="store_true", help="read the PIN from the first line of standard input")
    a.set_defaults(func=user_add_command)
    us.add_parser("list", help="list the health workers").set_defaults(func=user_list_command)
    r = us.add_parser("remove", help="remove a health worker")
    r.add_argument("name")
    r.set_defaults(func=user_remove_command)
