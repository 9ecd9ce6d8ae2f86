"""`glaucoscreen trials visits|sync`: the reliability trials, each ending in one line and the same counts.

    glaucoscreen trials visits --trials 200 [--seed S] [--json-out F]   # power cuts of the visit log
    glaucoscreen trials sync --trials 200 [--seed S] [--json-out F]     # sync killed and faulted against Orthanc

Both print one summary line and write a JSON object with at least COUNTS (what each means is in its
module's docstring); the exit status is 1 when any of them is not 0.
"""
from __future__ import annotations

import argparse
import importlib

COUNTS = ("lost", "torn", "duplicated", "leftovers")
KINDS = {
    "visits": ("visit_trials", "a visit writer SIGKILLed at seeded points, the log reopened and read back whole"),
    "sync": ("sync_trials", "sync killed and faulted at seeded points against its own Orthanc on 127.0.0.1"),
}


def summary_line(what: str, out: dict, seconds: float) -> str:
    """The one line a trial command prints."""
    counts = ", ".join(f"{out[k]} {k}" for k in COUNTS)
    return f"{what}: {out['trials']} trials, {counts} (seed {out['seed']}, {seconds:.1f} s)"


def failed(out: dict) -> bool:
    return any(out[k] for k in COUNTS)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if argv and argv[0] in KINDS:
        module = importlib.import_module(f"device.lab.{KINDS[argv[0]][0]}")
        return module.main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="glaucoscreen trials", description=__doc__.splitlines()[0],
                                     epilog="`glaucoscreen trials KIND --help` for its options (device.lab.trials).")
    sub = parser.add_subparsers(dest="kind", required=True)
    for name, (_module, text) in KINDS.items():
        sub.add_parser(name, help=text)
    parser.parse_args(argv)  # --help, or an error that names the kinds
    return 2
