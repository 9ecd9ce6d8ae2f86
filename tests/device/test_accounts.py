"""Health-worker accounts: PINs hashed and salted, the lock after wrong PINs and its doubling, PIN rules,
and the `glaucoscreen user` commands."""
from __future__ import annotations

import argparse
import io
import sqlite3
import stat

import pytest

from device.accounts import (
    FIRST_LOCK_S,
    MAX_FAILURES,
    MIGRATIONS,
    AccountLocked,
    Accounts,
    accounts_path,
    add_user_parser,
    user_add_command,
    user_list_command,
    user_remove_command,
    user_unlock_command,
)

PIN = "73914562"


class Clock:
    """Wall time the test moves by hand, so a 30-second lock takes no 30 seconds."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def accounts(tmp_path, clock):
    return Accounts(tmp_path / "accounts.db", clock=clock)


def _all_bytes(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("accounts.db"))


def test_pin_is_hashed_with_its_own_salt_and_never_stored(tmp_path, accounts):
    accounts.add("amina", PIN, admin=True)
    accounts.add("joseph", PIN)
    raw = _all_bytes(tmp_path)
    assert PIN.encode() not in raw and PIN.encode("utf-16-le") not in raw
    with sqlite3.connect(tmp_path / "accounts.db") as db:
        (h1, s1), (h2, s2) = db.execute("SELECT pin_hash, salt FROM users ORDER BY username").fetchall()
    assert s1 != s2 and h1 != h2, "the same PIN must hash differently for two workers"
    assert len(h1) == 32 and len(s1) == 16
    assert stat.S_IMODE((tmp_path / "accounts.db").stat().st_mode) == 0o600


def test_verify_accepts_only_the_right_pin(accounts):
    accounts.add("amina", PIN)
    assert accounts.verify("amina", PIN)
    assert accounts.verify("AMINA", PIN), "user names are not case-sensitive"
    assert not accounts.verify("amina", "73914563")
    assert not accounts.verify("amina", PIN[:-1])
    assert not accounts.verify("nobody", PIN)
    assert accounts.get("amina")["last_sign_in"] is not None


def test_wrong_pins_lock_the_account_and_each_lock_doubles(accounts, clock):
    accounts.add("amina", PIN)
    for left in range(MAX_FAILURES - 1, 0, -1):
        assert not accounts.verify("amina", "0000")
        assert accounts.attempts_left("amina") == left
    with pytest.raises(AccountLocked) as locked:
        accounts.verify("amina", "0000")
    assert locked.value.remaining_s == FIRST_LOCK_S
    clock.t += 10
    with pytest.raises(AccountLocked) as locked:
        accounts.verify("amina", PIN)  # the right PIN is refused while locked
    assert locked.value.remaining_s == pytest.approx(FIRST_LOCK_S - 10)
    assert "20 seconds" in str(locked.value)
    assert accounts.list()[0]["locked_for_s"] == pytest.approx(FIRST_LOCK_S - 10)

    clock.t += FIRST_LOCK_S
    for _ in range(MAX_FAILURES - 1):
        assert not accounts.verify("amina", "1111")
    with pytest.raises(AccountLocked) as locked:
        accounts.verify("amina", "1111")
    assert locked.value.remaining_s == 2 * FIRST_LOCK_S

    clock.t += 2 * FIRST_LOCK_S + 1
    assert accounts.verify("amina", PIN)
    for _ in range(MAX_FAILURES - 1):  # a correct PIN starts the count and the doubling afresh
        accounts.verify("amina", "2222")
    with pytest.raises(AccountLocked) as locked:
        accounts.verify("amina", "2222")
    assert locked.value.remaining_s == FIRST_LOCK_S


def test_lock_survives_reopening_and_an_admin_can_unlock(tmp_path, accounts, clock):
    accounts.add("amina", PIN)
    for _ in range(MAX_FAILURES - 1):
        accounts.verify("amina", "0000")
    with pytest.raises(AccountLocked):
        accounts.verify("amina", "0000")
    again = Accounts(tmp_path / "accounts.db", clock=clock)
    with pytest.raises(AccountLocked):
        again.verify("amina", PIN)
    again.unlock("amina")
    assert again.verify("amina", PIN)


@pytest.mark.parametrize("pin", ["123", "123456789", "12a4", "", " 1234", "١٢٣٤", None])
def test_pin_rules(accounts, pin):
    with pytest.raises(ValueError, match="4 to 8 digits"):
        accounts.add("amina", pin)


def test_user_rules_list_remove_and_new_pin(accounts):
    for bad in ["", "a b", "-x", "x" * 33, "ané"]:
        with pytest.raises(ValueError, match="user name"):
            accounts.add(bad, PIN)
    accounts.add("joseph", "1234")
    accounts.add("Amina", "5678", admin=True)
    with pytest.raises(ValueError, match="already"):
        accounts.add("amina", "9999")
    assert [(u["username"], u["admin"]) for u in accounts.list()] == [("Amina", True), ("joseph", False)]
    accounts.set_pin("joseph", "4321")
    assert not accounts.verify("joseph", "1234") and accounts.verify("joseph", "4321")
    accounts.remove("joseph")
    assert accounts.count() == 1 and not accounts.verify("joseph", "4321")
    with pytest.raises(LookupError):
        accounts.remove("joseph")
    assert accounts.schema_version == len(MIGRATIONS)


def _cli(tmp_path, *argv):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=tmp_path / "absent.toml")
    add_user_parser(p.add_subparsers(dest="command"))
    return p.parse_args(["user", "--data-dir", str(tmp_path), *argv])


def test_user_commands(tmp_path, capsys):
    answers = iter([PIN, PIN])
    assert user_add_command(_cli(tmp_path, "add", "amina", "--admin"), ask=lambda prompt: next(answers)) == 0
    assert user_add_command(_cli(tmp_path, "add", "joseph", "--pin-stdin"), stdin=io.StringIO("2468\n")) == 0
    answers = iter(["1234", "1243"])
    assert user_add_command(_cli(tmp_path, "add", "kofi"), ask=lambda prompt: next(answers)) == 2
    assert "differ" in capsys.readouterr().err
    assert user_add_command(_cli(tmp_path, "add", "kofi", "--pin-stdin"), stdin=io.StringIO("12\n")) == 2
    assert "4 to 8 digits" in capsys.readouterr().err

    accounts = Accounts(accounts_path(tmp_path))
    assert accounts.verify("amina", PIN) and accounts.verify("joseph", "2468")
    assert user_list_command(_cli(tmp_path, "list")) == 0
    listed = capsys.readouterr().out
    assert "amina" in listed and "admin" in listed and "joseph" in listed and "kofi" not in listed
    assert PIN not in listed
    assert user_remove_command(_cli(tmp_path, "remove", "joseph")) == 0
    assert user_remove_command(_cli(tmp_path, "remove", "joseph")) == 1
    assert [u["username"] for u in accounts.list()] == ["amina"]


def test_the_session_key_changes_at_sign_out_new_pin_lock_and_removal(accounts):
    """Every kiosk session carries its account's key; each of these gives the account a new one, so every
    session (and every copy of its cookie) ends. A correct PIN or an unlock leaves the key as it is."""
    accounts.add("amina", PIN)
    accounts.add("joseph", "1234")
    seen = {accounts.session_key("amina"), accounts.session_key("joseph")}
    assert len(seen) == 2 and all(len(k) == 32 for k in seen)

    def changed(before: str) -> str:
        after = accounts.session_key("amina")
        assert after != before and after not in seen
        seen.add(after)
        return after

    key = accounts.session_key("amina")
    assert accounts.verify("amina", PIN) and accounts.session_key("AMINA") == key
    accounts.end_sessions("amina")
    key = changed(key)
    accounts.set_pin("amina", "5555")
    key = changed(key)
    for _ in range(MAX_FAILURES - 1):
        accounts.verify("amina", "0000")
    assert accounts.session_key("amina") == key, "a wrong PIN alone ends nothing"
    with pytest.raises(AccountLocked):
        accounts.verify("amina", "0000")
    key = changed(key)
    accounts.unlock("amina")
    assert accounts.session_key("amina") == key
    accounts.remove("amina")
    assert accounts.session_key("amina") is None
    accounts.add("amina", PIN)
    changed(key)
    with pytest.raises(LookupError):
        accounts.end_sessions("nobody")


def test_accounts_of_an_older_unit_each_get_their_own_session_key(tmp_path):
    """An accounts file of schema 1 (before session keys) is brought up to date on opening: every account
    keeps its PIN and gets a key of its own."""
    from device.accounts import _hash_pin

    path = tmp_path / "accounts.db"
    with sqlite3.connect(path) as db:
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        for name in ("amina", "joseph"):
            salt = name.encode().ljust(16, b"-")
            db.execute("INSERT INTO users (username, pin_hash, salt, created_at) VALUES (?, ?, ?, '2025-01-01T00:00:00+00:00')",
                       (name, _hash_pin(PIN, salt), salt))
    accounts = Accounts(path)
    assert accounts.schema_version == len(MIGRATIONS) == 3
    keys = {accounts.session_key("amina"), accounts.session_key("joseph")}
    assert len(keys) == 2 and "" not in keys
    assert accounts.verify("joseph", PIN) and accounts.verify("amina", PIN)
    # v3: no language yet, so each keeps the one they next sign in with
    assert [u["language"] for u in accounts.list()] == ["", ""]


def test_user_unlock_command(tmp_path, capsys):
    """An IT person unlocks an account on the unit's terminal (the lock is in wall time, as the command reads it)."""
    accounts = Accounts(accounts_path(tmp_path))
    accounts.add("amina", PIN)
    for _ in range(MAX_FAILURES - 1):
        accounts.verify("amina", "0000")
    with pytest.raises(AccountLocked):
        accounts.verify("amina", "0000")
    assert user_unlock_command(_cli(tmp_path, "unlock", "amina")) == 0
    out = capsys.readouterr().out
    assert "unlocked amina" in out and "it was locked for" in out and "seconds more" in out and PIN not in out
    assert accounts.verify("amina", PIN)
    assert user_unlock_command(_cli(tmp_path, "unlock", "amina")) == 0
    assert "it was not locked" in capsys.readouterr().out
    assert user_unlock_command(_cli(tmp_path, "unlock", "nobody")) == 1
    assert "no user called 'nobody'" in capsys.readouterr().err
