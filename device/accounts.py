"""Health-worker accounts: who may sign in to the kiosk, with a PIN each, and who may manage the unit.

A PIN is short, so its hash alone would not stop someone who copied the file from finding it: the
file is created readable by its owner only, each PIN is hashed with scrypt (memory-hard, so a
stolen file costs real work per guess) and its own random salt, and at the kiosk an account locks
after `MAX_FAILURES` wrong PINs in a row, for `FIRST_LOCK_S` seconds and twice as long each time
it locks again without a correct PIN in between. A PIN is never logged or printed.

Each account has a random session key, carried in every kiosk session cookie of that account and checked
on every request: signing out, a new PIN, a lock and removing the account replace it (or the row), so
every session of that account ends, a cookie copied before included.

A full disk must not stop the kiosk from showing what is recorded: one connection stays open for the
life of an `Accounts`, so the write-ahead log's index is never rebuilt (on a full disk a fresh
connection cannot make it and reads fail with "disk I/O error"). A sign-in count, lock, unlock or
sign-out that cannot be written for want of space is held in memory and written with the account's
next write, so a lock and a sign-out still hold while the disk is full (in this process; a restart
forgets what was never written). A new PIN, a new account and a removal are never held: they fail
with the disk-full error.

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
import logging
import os
import re
import secrets
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

from device.visits.datadir import DataDir
from device.visits.imagestore import is_disk_full

__all__ = ["Accounts", "AccountLocked", "MAX_FAILURES", "FIRST_LOCK_S", "accounts_path", "check_pin",
           "add_user_parser", "user_add_command", "user_list_command", "user_remove_command",
           "user_unlock_command"]

MAX_FAILURES = 5          # wrong PINs in a row before the account locks
FIRST_LOCK_S = 30.0       # the first lock; each further lock doubles
MAX_LOCK_S = 3600.0       # a worker locked out for longer than an hour cannot screen; an admin unlocks instead
PIN_DIGITS = (4, 8)
_USERNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
# scrypt cost: ~16 MiB and ~50 ms per PIN on a Pi 5; a sign-in waits that long once, a guesser per guess
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_BUSY_TIMEOUT_S = 10.0
_HELD = ("failures", "locks", "locked_until", "last_sign_in", "session_key", "language")  # what a full disk may hold in memory
_LANGUAGE = re.compile(r"[a-z]{2,3}")  # an ISO 639 code, as the kiosk names its languages

log = logging.getLogger(__name__)


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


def check_language(language: str) -> str:
    """A language code ('hi', 'sw') or '' for none chosen yet; otherwise a ValueError."""
    if not isinstance(language, str) or not (language == "" or _LANGUAGE.fullmatch(language)):
        raise ValueError(f"a language is a two- or three-letter code such as 'hi' or 'sw', not {language!r}")
    return language


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


def _new_session_key() -> str:
    return secrets.token_hex(16)


def _add_session_key_v2(db: sqlite3.Connection) -> None:
    """The key every session cookie of the account carries: replaced, it ends them all."""
    db.execute("ALTER TABLE users ADD COLUMN session_key TEXT NOT NULL DEFAULT ''")
    for (name,) in db.execute("SELECT username FROM users").fetchall():
        db.execute("UPDATE users SET session_key = ? WHERE username = ?", (_new_session_key(), name))


def _add_language_v3(db: sqlite3.Connection) -> None:
    """The language the kiosk speaks to the account in ('' until the admin sets it or the worker first signs in)."""
    db.execute("ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT ''")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_create_v1, _add_session_key_v2, _add_language_v3]   # version N = first N applied


class Accounts:
    def __init__(self, db_path: Path, *, clock: Callable[[], float] = time.time):
        """Open (creating if needed) the accounts file. `clock` is wall time in seconds: locks survive a restart."""
        self.db_path = Path(db_path)
        self._clock = clock
        self._held: dict[str, dict] = {}   # lower-case user name -> values a full disk kept from being written
        self._held_lock = threading.Lock()
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
        # Held open until `close`: while one connection is open the log and its index stay on disk, so the
        # connection of each use (below) finds them and needs no free space to read.
        self._keeper: sqlite3.Connection | None = sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_S,
                                                                  isolation_level=None, check_same_thread=False)
        self._keeper.execute("SELECT count(*) FROM users").fetchone()

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection per use: the kiosk's threads each check a session on every request, and a
        connection of its own needs no lock between them."""
        db = sqlite3.connect(self.db_path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: two tablets at once still count every guess. Committed unless it raised."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                if db.in_transaction:
                    db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _held_values(self, name: str) -> dict:
        with self._held_lock:
            return dict(self._held.get(name.lower(), {}))

    def _save(self, db: sqlite3.Connection, name: str, values: dict) -> bool:
        """Write `values` to the account's row and commit (`db` is in a transaction, which this ends).
        Where the disk is full they are held in memory instead, with whatever was held already, and
        written with the account's next write that succeeds. False when they were held."""
        values = self._held_values(name) | values
        assert set(values) <= set(_HELD), values  # column names go into the SQL: only these
        try:
            db.execute(f"UPDATE users SET {', '.join(f'{column} = ?' for column in values)} WHERE username = ?",
                       (*values.values(), name))
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc, self.db_path.parent):
                raise
            if db.in_transaction:
                db.execute("ROLLBACK")
            log.warning("accounts: the disk is full: %s of %s held in memory until there is space to write them",
                        ", ".join(sorted(values)), name)
            with self._held_lock:
                self._held[name.lower()] = values
            return False
        self._forget_held(name)
        return True

    def _forget_held(self, name: str) -> None:
        with self._held_lock:
            self._held.pop(name.lower(), None)

    def _row(self, db: sqlite3.Connection, username: str) -> dict | None:
        row = db.execute("SELECT username, pin_hash, salt, failures, locks, locked_until, session_key FROM users "
                         "WHERE username = ?", (username,)).fetchone()
        if row is None:
            return None
        named = dict(zip(("username", "pin_hash", "salt", "failures", "locks", "locked_until", "session_key"), row))
        return named | self._held_values(named["username"])

    @property
    def schema_version(self) -> int:
        with self._connect() as db:
            return db.execute("PRAGMA user_version").fetchone()[0]

    def add(self, username: str, pin: str, admin: bool = False, language: str = "") -> None:
        username, pin, language = check_username(username), check_pin(pin), check_language(language)
        salt = secrets.token_bytes(16)
        row = (username, _hash_pin(pin, salt), salt, int(bool(admin)), dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               _new_session_key(), language)
        with self._connect() as db:
            try:
                db.execute("INSERT INTO users (username, pin_hash, salt, admin, created_at, session_key, language) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise ValueError(f"there is already a user called {username!r}") from None
        self._forget_held(username)

    def set_pin(self, username: str, pin: str) -> None:
        """A new PIN (a worker who forgot theirs); clears any lock and ends every session of the account."""
        pin = check_pin(pin)
        salt = secrets.token_bytes(16)
        with self._connect() as db:
            cur = db.execute("UPDATE users SET pin_hash = ?, salt = ?, failures = 0, locks = 0, locked_until = 0, "
                             "session_key = ? WHERE username = ?", (_hash_pin(pin, salt), salt, _new_session_key(), username))
        if cur.rowcount == 0:
            raise LookupError(f"there is no user called {username!r}")
        self._forget_held(username)

    def verify(self, username: str, pin: str) -> bool:
        """True for the right PIN. A wrong one counts toward the lock; the wrong PIN that locks the
        account, and any attempt while it is locked, raise AccountLocked with the time left. A lock
        ends every session of the account."""
        now = self._clock()
        with self._transaction() as db:
            row = self._row(db, username)
            if row is None:
                _hash_pin("0000", b"\0" * 16)  # the same work as for a real user: timing does not tell who exists
                return False
            name = row["username"]
            if row["locked_until"] > now:
                raise AccountLocked(name, row["locked_until"] - now)
            if isinstance(pin, str) and hmac.compare_digest(_hash_pin(pin, row["salt"]), row["pin_hash"]):
                self._save(db, name, {"failures": 0, "locks": 0, "locked_until": 0.0,
                                      "last_sign_in": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
                return True
            failures, lock_s = row["failures"] + 1, 0.0
            if failures >= MAX_FAILURES:
                lock_s = min(MAX_LOCK_S, FIRST_LOCK_S * 2 ** row["locks"])
                self._save(db, name, {"failures": 0, "locks": row["locks"] + 1, "locked_until": now + lock_s,
                                      "session_key": _new_session_key()})
            else:
                self._save(db, name, {"failures": failures})
        if lock_s:
            raise AccountLocked(name, lock_s)
        return False

    def attempts_left(self, username: str) -> int | None:
        """Wrong PINs still allowed before the account locks (None for an unknown user)."""
        user = self.get(username)
        return None if user is None else MAX_FAILURES - user["failures"]

    def unlock(self, username: str) -> None:
        with self._transaction() as db:
            row = self._row(db, username)
            if row is None:
                raise LookupError(f"there is no user called {username!r}")
            self._save(db, row["username"], {"failures": 0, "locks": 0, "locked_until": 0.0})

    def set_language(self, username: str, language: str) -> None:
        """The language the kiosk speaks to the account in. On a full disk it is held in memory until the
        account's next write, like a sign-in count: a worker's first sign-in must not fail for it."""
        language = check_language(language)
        with self._transaction() as db:
            row = self._row(db, username)
            if row is None:
                raise LookupError(f"there is no user called {username!r}")
            self._save(db, row["username"], {"language": language})

    def end_sessions(self, username: str) -> None:
        """Sign the account out everywhere: every session cookie it was given stops working."""
        with self._transaction() as db:
            row = self._row(db, username)
            if row is None:
                raise LookupError(f"there is no user called {username!r}")
            self._save(db, row["username"], {"session_key": _new_session_key()})

    def session_key(self, username: str) -> str | None:
        """The key a session of this account must carry to be valid (None: no such account)."""
        with self._connect() as db:
            row = self._row(db, username)
        return None if row is None else row["session_key"]

    def get(self, username: str) -> dict | None:
        rows = self._users("WHERE username = ?", (username,))
        return rows[0] if rows else None

    def list(self) -> list[dict]:
        return self._users("ORDER BY username COLLATE NOCASE")

    def _users(self, where: str, params: tuple = ()) -> builtins.list[dict]:  # `list` here is the method above
        now = self._clock()
        with self._connect() as db:
            rows = db.execute("SELECT username, admin, created_at, last_sign_in, failures, locked_until, language "
                              f"FROM users {where}", params).fetchall()
        users = []
        for u, a, c, s, f, until, lang in rows:
            held = self._held_values(u)
            s, f, until = held.get("last_sign_in", s), held.get("failures", f), held.get("locked_until", until)
            users.append({"username": u, "admin": bool(a), "created_at": c, "last_sign_in": s, "failures": f,
                          "locked_for_s": max(0.0, until - now), "language": held.get("language", lang)})
        return users

    def remove(self, username: str) -> None:
        """Remove the account; its sessions end with it (and a new account of the same name gets a new key)."""
        with self._connect() as db:
            if db.execute("DELETE FROM users WHERE username = ?", (username,)).rowcount == 0:
                raise LookupError(f"there is no user called {username!r}")
        self._forget_held(username)

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
    """The PIN from the first line of stdin (--pin-stdin), or asked twice, unseen, on a terminal. Without a
    terminal there is nobody to ask: say how to give it instead of failing on the missing terminal."""
    if args.pin_stdin:
        line = stdin.readline()
        if not line:
            raise ValueError("--pin-stdin was given but standard input is empty: pipe the PIN in, "
                             f"e.g. `echo 2580 | glaucoscreen user {args.user_command} {args.name} --pin-stdin`")
        return check_pin(line.strip())
    if ask is getpass.getpass and not stdin.isatty():
        raise ValueError("there is no terminal to ask for the PIN on: give it on standard input with --pin-stdin, "
                         f"e.g. `echo 2580 | glaucoscreen user {args.user_command} {args.name} --pin-stdin`")
    try:
        pin = check_pin(ask(f"PIN for {args.name} (4-8 digits): "))
        again = ask("The same PIN again: ")
    except EOFError:
        raise ValueError("no PIN was typed (end of input): try again, or use --pin-stdin") from None
    if again != pin:
        raise ValueError("the two PINs differ")
    return pin


def user_add_command(args, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
                     ask: Callable[[str], str] = getpass.getpass) -> int:
    """`glaucoscreen user add NAME [--admin] [--pin-stdin]`: the PIN is asked twice, unseen, or read from stdin."""
    try:
        check_username(args.name)
        language = check_language(getattr(args, "language", "") or "")
        pin = _read_pin(args, stdin or sys.stdin, ask)
        _open(args).add(args.name, pin, admin=args.admin, language=language)
    except ValueError as exc:
        print(f"glaucoscreen user add: {exc}", file=sys.stderr)
        return 2
    print(f"added {'admin ' if args.admin else ''}{args.name.strip()}; they can sign in at the kiosk now", file=stdout or sys.stdout)
    return 0


def user_reset_pin_command(args, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
                           ask: Callable[[str], str] = getpass.getpass) -> int:
    """`glaucoscreen user reset-pin NAME [--pin-stdin]`: a forgotten PIN replaced; their kiosk sessions end."""
    try:
        accounts = _open(args)
        if accounts.get(args.name) is None:
            raise ValueError(f"no user {args.name!r}: `glaucoscreen user list` shows who there is")
        pin = _read_pin(args, stdin or sys.stdin, ask)
        accounts.set_pin(args.name, pin)  # also clears a lock
    except (ValueError, LookupError) as exc:
        print(f"glaucoscreen user reset-pin: {exc}", file=sys.stderr)
        return 2
    print(f"{args.name.strip()} has a new PIN; anyone signed in as {args.name.strip()} at the kiosk is signed out",
          file=stdout or sys.stdout)
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


def user_unlock_command(args, *, stdout: TextIO | None = None) -> int:
    """`glaucoscreen user unlock NAME`: the account may try its PIN again at once (the kiosk's admin page does the same)."""
    accounts = _open(args)
    try:
        user = accounts.get(args.name)
        accounts.unlock(args.name)
    except LookupError as exc:
        print(f"glaucoscreen user unlock: {exc}", file=sys.stderr)
        return 1
    assert user is not None  # unlock found the account
    was = f"it was locked for {describe_wait(user['locked_for_s'])} more" if user["locked_for_s"] else "it was not locked"
    print(f"unlocked {user['username']} ({was}); they can sign in at the kiosk now", file=stdout or sys.stdout)
    return 0


def add_user_parser(sub: argparse._SubParsersAction) -> None:
    """Adds `user add|list|remove|unlock` to the `glaucoscreen` command's subparsers."""
    u = sub.add_parser("user", help="health-worker accounts for the kiosk")
    u.add_argument("--data-dir", type=Path, help="the unit's data folder (default: from the configuration)")
    us = u.add_subparsers(dest="user_command", required=True)
    a = us.add_parser("add", help="add a health worker (asks for their PIN twice)")
    a.add_argument("name", help="the health worker's user name, as the sign-in page lists it")
    a.add_argument("--admin", action="store_true", help="may add and remove users at the kiosk")
    a.add_argument("--pin-stdin", action="store_true", help="read the PIN from the first line of standard input")
    a.add_argument("--language", default="", metavar="CODE",
                   help="the kiosk's language for them: en, hi, sw, es or fr (default: the one they first sign in with)")
    a.set_defaults(func=user_add_command)
    us.add_parser("list", help="list the health workers").set_defaults(func=user_list_command)
    r = us.add_parser("remove", help="remove a health worker (their sessions at the kiosk end)")
    r.add_argument("name", help="the health worker's user name")
    r.set_defaults(func=user_remove_command)
    k = us.add_parser("unlock", help="let a health worker locked out by wrong PINs try again now")
    k.add_argument("name", help="the health worker's user name")
    k.set_defaults(func=user_unlock_command)
    n = us.add_parser("reset-pin", help="give a health worker a new PIN (asks twice; their kiosk sessions end)")
    n.add_argument("name", help="the health worker's user name")
    n.add_argument("--pin-stdin", action="store_true", help="read the PIN from the first line of standard input")
    n.set_defaults(func=user_reset_pin_command)
