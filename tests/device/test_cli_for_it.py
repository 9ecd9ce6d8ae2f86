"""The command line as a clinic's IT person meets it: options before or after the subcommand, a PIN with
no terminal to ask on, a forgotten PIN replaced, help on every option, the doctor in words, and a sync
that says with its exit status when nothing could be sent. Real processes where a terminal matters."""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys

from device.accounts import Accounts
from device.cli import build_parser, main
from device.lab.sync_trials import add_visits, sample_eyes
from device.visits.datadir import DataDir
from device.visits.visitlog import VisitLog


def _glaucoscreen(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "device.cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=120, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_options_go_before_or_after_the_subcommand(tmp_path, capsys):
    data = tmp_path / "unit"
    data.mkdir()
    Accounts(DataDir(data).accounts_db).add("wanjiru", "2580", admin=True)
    for argv in (["user", "list", "--data-dir", str(data)], ["--data-dir", str(data), "user", "list"],
                 ["user", "--data-dir", str(data), "list"]):
        assert main(argv) == 0, argv
        assert capsys.readouterr().out.startswith("wanjiru"), argv
    parsed = build_parser().parse_args(["--data-dir", str(data), "doctor", "--json"])
    assert parsed.data_dir == data  # a subcommand's own --data-dir does not wipe the one given before it
    assert build_parser().parse_args(["doctor", "--data-dir", str(data)]).data_dir == data
    assert build_parser().parse_args(["train", "--config", "x.json"]).config.name == "x.json"  # train's own --config


def test_a_pin_with_no_terminal_to_ask_on_is_explained_not_a_traceback(tmp_path):
    out = _glaucoscreen("user", "add", "kofi", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no terminal to ask for the PIN" in out.stderr and "--pin-stdin" in out.stderr
    empty = _glaucoscreen("user", "add", "kofi", "--pin-stdin", "--data-dir", str(tmp_path), stdin="")
    assert empty.returncode == 2 and "standard input is empty" in empty.stderr and "Traceback" not in empty.stderr
    added = _glaucoscreen("user", "add", "kofi", "--pin-stdin", "--data-dir", str(tmp_path), stdin="2468\n")
    assert added.returncode == 0, added.stderr


def test_a_forgotten_pin_is_reset_and_the_old_one_stops_working(tmp_path):
    accounts = Accounts(DataDir(tmp_path).accounts_db)
    accounts.add("amina", "2580")
    out = _glaucoscreen("user", "reset-pin", "amina", "--pin-stdin", "--data-dir", str(tmp_path), stdin="97531\n")
    assert out.returncode == 0 and "amina has a new PIN" in out.stdout
    fresh = Accounts(DataDir(tmp_path).accounts_db)
    assert fresh.verify("amina", "97531") and not fresh.verify("amina", "2580")
    nobody = _glaucoscreen("user", "reset-pin", "nobody", "--pin-stdin", "--data-dir", str(tmp_path), stdin="1234\n")
    assert nobody.returncode == 2 and "no user 'nobody'" in nobody.stderr


def test_every_option_of_every_command_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(" ".join(path + [action.option_strings[0] if action.option_strings else action.dest]))

    walk(build_parser(), ["glaucoscreen"])
    assert missing == []


def test_the_doctor_speaks_in_words_and_json_on_request(tmp_path):
    text = _glaucoscreen("doctor", "--simulate", "--data-dir", str(tmp_path))
    assert text.returncode == 0, text.stderr
    assert "{'" not in text.stdout and "=" not in text.stdout.split("\n")[0]  # no Python reprs, no key=value runs
    assert text.stdout.splitlines()[0].split() == ["ok", "board"] and text.stdout.rstrip().endswith("All checks passed.")
    assert "       free gib:" in text.stdout
    as_json = _glaucoscreen("doctor", "--simulate", "--json", "--data-dir", str(tmp_path))
    assert json.loads(as_json.stdout)["ok"] is True


def test_sync_once_exits_non_zero_when_nothing_could_be_sent(tmp_path, shared_data):
    config = tmp_path / "glaucoscreen.toml"
    config.write_text(f'data_dir = "{tmp_path / "unit"}"\n[sync]\nurl = "http://127.0.0.1:9/dicom-web"\n'
                      "timeout_s = 2\ndeadline_s = 5\n")
    with VisitLog(tmp_path / "unit") as visits:
        empty = _glaucoscreen("--config", str(config), "sync", "--once")
        assert empty.returncode == 0, empty.stderr  # nothing was due: nothing failed
        add_visits(visits, sample_eyes(shared_data, 1), 1, random.Random(5))
    stuck = _glaucoscreen("sync", "--once", "--config", str(config))
    assert stuck.returncode == 1 and "nothing could be sent (1 tried)" in stuck.stderr  # an unreachable PACS stops the run
