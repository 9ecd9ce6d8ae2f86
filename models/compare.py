"""Single-task, vanilla multi-task and MTL-IO training compared on one split, like the MTL-IO paper's Table 1.

    python -m models.compare train --config models/configs/compare.json [--out runs/compare] [--jobs 6]
    python -m models.compare slim --runs runs/compare --out DIR     # weights only, half precision, to carry
    python -m models.compare evaluate --runs runs/compare [--json-out F] [--markdown-out F]

Every arm starts from the same config (data, augmentation, epochs, batch, learning rate, seed) and
differs only in what `models.train` calls `mode` and `tasks`:
- STL: four networks, each learning one task (disc, cup, fovea, glaucoma) with the others' heads idle;
- MTL: one network, the weighted sum of the four losses under one optimizer;
- MTL-IO: one network, one Adam per task, the tasks stepping in turn on each batch.
Each arm keeps the epoch its own validation score picked, then all are measured on the test split
(the photos no training or selection saw) by `models.train.validate`, i.e. on ground-truth disc
crops, and the fovea on synthetic photos, the only ones here with a fovea. STL's vCDR comes from
its disc network's disc and its cup network's cup, as an STL system would measure it.

Time per step is measured by `time_steps`: every arm on the same batch, one after the other in one
process, so the ratios hold even on a machine busy with other work (the training runs' own step
times are kept in the JSON, but other jobs sharing the CPU move them).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from io import TextIOWrapper
from pathlib import Path

import torch

from models.datasets import DEFAULT_DATA, decode_mask, vcdr_from_masks
from models.net import parameter_count
from models.onnx_export import load_checkpoint
from models.train import (
    REPO,
    TASKS,
    VIEW_KINDS,
    augmented,
    build_network,
    cache_sources,
    cache_synthetic,
    load_config,
    make_batch,
    make_optimizers,
    predict,
    train_step,
    validate,
)

ARMS: dict[str, dict] = {
    **{f"stl-{task}": {"mode": "mtl", "tasks": [task]} for task in TASKS},
    "mtl": {"mode": "mtl", "tasks": list(TASKS)},
    "mtl-io": {"mode": "mtl_io", "tasks": list(TASKS)},
}
TEST_SOURCES = [{"folder": "refuge-val", "splits": ["test"]}, {"folder": "drishti-gs1", "splits": ["test"]}]
TEST_SYNTHETIC = {"count": 100, "seed": 123}
WEIGHTS = "weights.pt"


def arm_config(base: Path, arm: str) -> dict:
    config = load_config(base)
    config.update(ARMS[arm])
    config["name"] = f"{config['name']}-{arm}"
    return config


def train_arms(base: Path, out: Path, data: Path, jobs: int, arms: list[str]) -> None:
    """Each arm in its own process (a crash in one leaves the others), at most `jobs` at once."""
    pending = list(arms)
    running: list[tuple[str, subprocess.Popen[bytes], TextIOWrapper]] = []
    while pending or running:
        while pending and len(running) < jobs:
            arm = pending.pop(0)
            folder = out / arm
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "arm.json").write_text(json.dumps(arm_config(base, arm), indent=2))
            log = open(folder / "train.log", "w")
            cmd = [sys.executable, "-m", "models.train", "--config", str(folder / "arm.json"), "--out", str(folder),
                   "--data", str(data)]
            running.append((arm, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log))
            print(f"started {arm}", flush=True)
        for item in list(running):
            arm, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"{arm} finished with status {proc.returncode}", flush=True)
        time.sleep(2)


def slim(runs: Path, out: Path) -> None:
    """best.pt without optimizer state, in half precision: a quarter of the bytes, for carrying the runs
    to where the test photos are. Evaluation reads these exact weights back to float32."""
    out.mkdir(parents=True, exist_ok=True)
    for best in sorted(runs.glob("*/best.pt")):
        state = torch.load(best, map_location="cpu", weights_only=False)
        weights = {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}
        torch.save({"model": weights, "config": state["config"], "log": state["log"], "epoch": state["epoch"],
                    "parameters": state["parameters"]}, out / f"{best.parent.name}.pt")
        print(f"{best.parent.name}: epoch {state['epoch'] + 1} of {state['config']['epochs']}", flush=True)


def time_steps(base: dict, steps: int = 8, warmup: int = 2) -> dict[str, float]:
    """Seconds per optimisation step of each arm (the four STL arms separately) on one fixed batch."""
    import numpy as np

    size, batch_size = int(base["input_size"]), int(base["batch_size"])
    views = cache_synthetic({"count": batch_size, "seed": 5, "glaucoma_fraction": 0.5}, ["whole"], size)
    batch = make_batch([augmented(v, np.random.default_rng(i), size) for i, v in enumerate(views)], size)
    batch["glaucoma_known"][:] = True
    out = {}
    for arm, spec in ARMS.items():
        config = {**base, **spec}
        torch.manual_seed(0)
        net = build_network(config, pretrained=False).to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format at runtime; torch's overloads omit it
        optimizers = make_optimizers(net, config)
        for _ in range(warmup):
            train_step(net, optimizers, batch, config)
        started = time.perf_counter()
        for _ in range(steps):
            train_step(net, optimizers, batch, config)
        out[arm] = (time.perf_counter() - started) / steps
    return out


def stl_vcdr_mae(disc_net, cup_net, views, size: int) -> float | None:
    """vCDR error of the STL system: the disc network's disc with the cup network's cup."""
    crops = [v for v in views if v.kind == "disc"]
    errors = []
    for view, d, c in zip(crops, predict(disc_net, crops, size, 16), predict(cup_net, crops, size, 16)):
        disc, cup = d["disc"][0] > 0.5, c["cup"][0] > 0.5
        measured = vcdr_from_masks(disc, cup & disc) if disc.any() else 0.0
        errors.append(abs(measured - vcdr_from_masks(*decode_mask(view.mask))))
    return float(sum(errors) / len(errors)) if errors else None


def _mean_step_seconds(log: list[dict]) -> float | None:
    values = [e["seconds_per_step"] for e in log if "seconds_per_step" in e]
    return sum(values) / len(values) if values else None


def evaluate_runs(runs: Path, data: Path, limit: int | None = None) -> dict:
    """Every arm on the test photos, per source and together; then the paper-style table.
    `limit` takes the first photos of each source only (quick checks, not figures to quote)."""
    files = {p.stem: p for p in runs.glob("*.pt")} or {p.parent.name: p for p in runs.glob("*/best.pt")}
    missing = [a for a in ARMS if a not in files]
    if missing:
        raise SystemExit(f"no checkpoint for {missing} in {runs}")
    torch.set_num_threads(2)
    loaded = {arm: load_checkpoint(files[arm]) for arm in ARMS}
    base = loaded["mtl"][1]["config"]
    size = int(base["input_size"])  # the arms share it
    sources = [{**s, "limit": limit} for s in TEST_SOURCES] if limit else TEST_SOURCES
    real = {source["folder"]: views for source, views in cache_sources(data, sources, VIEW_KINDS, size, False)}
    synthetic = cache_synthetic({**TEST_SYNTHETIC, "count": limit or TEST_SYNTHETIC["count"], "glaucoma_fraction": 0.3},
                                VIEW_KINDS, size, for_training=False)
    groups = {**real, "all real": [v for views in real.values() for v in views], "synthetic": synthetic}
    arms, nets = {}, {}
    timing = time_steps(base)
    for arm, (net, state) in loaded.items():
        nets[arm] = net
        arms[arm] = {"epoch": state["epoch"] + 1, "epochs": state["config"]["epochs"],
                     "parameters": parameter_count(net), "seconds_per_step": timing[arm],
                     "seconds_per_step_in_training": _mean_step_seconds(state["log"]),
                     "test": {name: validate(net, views, size, 16) for name, views in groups.items()}}
        print(f"{arm}: {json.dumps(arms[arm]['test']['all real'])}", flush=True)
    stl_vcdr = {name: stl_vcdr_mae(nets["stl-disc"], nets["stl-cup"], views, size) for name, views in groups.items()}
    return {"arms": arms, "stl_vcdr_mae": stl_vcdr, "table": table_rows(arms, stl_vcdr)}


def table_rows(arms: dict, stl_vcdr: dict[str, float | None]) -> list[dict]:
    """STL takes each task's figure from its own network; its size and time are the four together."""
    def figures(source: str, pick: dict[str, str]) -> dict:
        real, synthetic = (lambda a: arms[a]["test"][source]), (lambda a: arms[a]["test"]["synthetic"])
        vcdr = stl_vcdr[source] if pick["cup"] != pick["disc"] else real(pick["cup"])["vcdr_mae"]
        return {"disc_dice": real(pick["disc"])["disc_dice"], "cup_dice": real(pick["cup"])["cup_dice"],
                "vcdr_mae": vcdr, "fovea_error_dd": synthetic(pick["fovea"])["fovea_error_dd"],
                "fovea_error_px": synthetic(pick["fovea"])["fovea_error_px"],
                "glaucoma_auc": real(pick["glaucoma"])["glaucoma_auc"]}

    rows = []
    for method, pick, members in (("STL", {t: f"stl-{t}" for t in TASKS}, [f"stl-{t}" for t in TASKS]),
                                  ("MTL", {t: "mtl" for t in TASKS}, ["mtl"]),
                                  ("MTL-IO", {t: "mtl-io" for t in TASKS}, ["mtl-io"])):
        steps = [arms[a]["seconds_per_step"] for a in members]
        rows.append({"method": method, "parameters": sum(arms[a]["parameters"] for a in members),
                     "seconds_per_step": sum(steps) if all(s is not None for s in steps) else None,
                     **{source: figures(source, pick) for source in ("all real", "refuge-val", "drishti-gs1")}})
    return rows


def markdown(result: dict) -> str:
    def f(v, digits=3):
        return "-" if v is None else f"{v:.{digits}f}"

    lines = []
    for source, title in (("all real", "REFUGE test + Drishti-GS1 test"), ("refuge-val", "REFUGE test"),
                          ("drishti-gs1", "Drishti-GS1 official test")):
        lines += [f"**{title}** (fovea: synthetic test photos)", "",
                  "| method | parameters | s/step | disc Dice | cup Dice | vCDR MAE | fovea error (disc diameters) | AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in result["table"]:
            m = row[source]
            lines.append(f"| {row['method']} | {row['parameters'] / 1e6:.2f} M | {f(row['seconds_per_step'], 4)} | "
                         f"{f(m['disc_dice'])} | {f(m['cup_dice'])} | {f(m['vcdr_mae'])} | {f(m['fovea_error_dd'], 2)} | "
                         f"{f(m['glaucoma_auc'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="STL vs MTL vs MTL-IO on one split.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", type=Path, default=REPO / "models" / "configs" / "compare.json")
    t.add_argument("--out", type=Path, default=REPO / "runs" / "compare")
    t.add_argument("--data", type=Path, default=DEFAULT_DATA)
    t.add_argument("--jobs", type=int, default=1)
    t.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    s = sub.add_parser("slim")
    s.add_argument("--runs", type=Path, default=REPO / "runs" / "compare")
    s.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("evaluate")
    e.add_argument("--runs", type=Path, default=REPO / "runs" / "compare")
    e.add_argument("--data", type=Path, default=DEFAULT_DATA)
    e.add_argument("--json-out", type=Path)
    e.add_argument("--markdown-out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "train":
        train_arms(args.config, args.out, args.data, args.jobs, args.arms)
    elif args.command == "slim":
        slim(args.runs, args.out)
    else:
        result = evaluate_runs(args.runs, args.data)
        text = markdown(result)
        print(text)
        if args.json_out:
            args.json_out.write_text(json.dumps(result, indent=2))
        if args.markdown_out:
            args.markdown_out.write_text(text)


if __name__ == "__main__":
    main()
