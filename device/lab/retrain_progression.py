"""`glaucoscreen retrain-progression`: the progression network retrained on registered visit pairs, measured
on GRAPE's validation and test patients, and shipped only where its validation AUC's 95% interval lies above
0.5 (as `fit-progression` keeps the change model).

    glaucoscreen retrain-progression --grape DIR --work DIR [--config models/configs/progression.json]

Each step leaves its output in --work, and a rerun takes up the registered pairs already built there:
1. `pairs.npz`: every earlier photo of a GRAPE eye registered onto its last, with the pair's noise-aware
   change measures (`progression_pairs`; the noise is the shipped policy's);
2. `run/best.pt`: `models.progression_net.train` with the config (its seed, epochs and the checkpoint kept);
3. the network's figures on the validation and test eyes (first photo against last, as the unit compares a
   visit with the eye's first): AUC with a 95% interval that resamples patients, and the sensitivity and
   specificity at the threshold set on validation for 80% specificity; beside them, the AUC of the vCDR's
   noise-scaled change alone on the same eyes;
4. `progression-candidate.onnx` (and `candidate-manifest.json`): the export, checked against torch;
5. only where the validation interval's lower end lies above 0.5 is it exported again as the shipped
   `progression.onnx`, with its manifest entry; otherwise the shipped network stays and `figures.json`
   says why.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from device.lab.evaluate import auc_interval
from device.lab.roc import auc, threshold_at_specificity

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "models" / "configs" / "progression.json"
SPECIFICITY = 0.8
CHANCE = 0.5


def part_figures(patients: Sequence[str], labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> dict:
    """AUC with its patient-resampled interval, and the rates at `threshold` with the counts behind them."""
    y = np.asarray(labels, int)
    s = np.asarray(scores, float)
    a = auc(y, s)
    ci = auc_interval(list(patients), y, s) if a is not None else None
    out: dict = {"eyes": int(len(y)), "patients": len(set(patients)), "progressing_eyes": int(y.sum()),
                 "auc": a, "auc_low": ci[0] if ci else None, "auc_high": ci[1] if ci else None}
    if threshold is not None:
        called = s >= threshold
        out.update({"sensitivity": float(called[y == 1].mean()) if (y == 1).any() else None,
                    "specificity": float((~called[y == 0]).mean()) if (y == 0).any() else None,
                    "called_progressing": f"{int(called[y == 1].sum())} of {int((y == 1).sum())}",
                    "called_stable": f"{int((~called[y == 0]).sum())} of {int((y == 0).sum())}"})
    return out


def earns_its_place(val: dict) -> tuple[bool, str]:
    """The ship rule, and why, in words: the validation AUC's whole interval must lie above chance."""
    low, high = val.get("auc_low"), val.get("auc_high")
    if low is None:
        return False, f"its validation AUC has no interval ({val.get('eyes', 0)} eyes, {val.get('progressing_eyes', 0)} progressing)"
    if low > CHANCE:
        return True, f"its validation AUC interval ({low:.2f} - {high:.2f}) lies above {CHANCE}"
    return False, f"its validation AUC interval ({low:.2f} - {high:.2f}) reaches {CHANCE} or below: no better than chance"


def measure(checkpoint: Path, pairs_file: Path) -> dict:
    """The network's figures on the validation and test eyes, the threshold set on validation."""
    import torch

    from models.onnx_export import load_checkpoint
    from models.progression_net import ProgressionNet, pair_scores, read_pairs

    net, state = load_checkpoint(checkpoint)
    if not isinstance(net, ProgressionNet):
        raise ValueError(f"{checkpoint} holds a {state['config'].get('network', 'segmentation')} network, not a progression one")
    torch.set_num_threads(int(state["config"].get("threads", 2)))
    names = list(state["config"]["change_features"])
    pairs = read_pairs(pairs_file)
    parts = {name: pairs.part(name, first_only=True) for name in ("val", "test")}
    scores = {name: pair_scores(net, p, names) for name, p in parts.items()}
    val_y = parts["val"].progressed.astype(int)
    threshold = threshold_at_specificity(val_y, scores["val"], SPECIFICITY) if (val_y == 0).any() else None
    out: dict = {"epoch": state.get("epoch"), "threshold_logit": threshold, "specificity_target": SPECIFICITY}
    for name, p in parts.items():
        out[name] = part_figures(list(p.patient), p.progressed, scores[name], threshold)
        out[name]["vcdr_change_alone"] = part_figures(list(p.patient), p.progressed, p.features(["z_vcdr"])[:, 0], None)
    training = pairs.part("train")
    out["train"] = {"pairs": len(training), "eyes": len(set(training.eye)), "patients": len(set(training.patient)),
                    "progressing_eyes": len({e for e, y in zip(training.eye, training.progressed) if y})}
    return out


def retrain(grape: Path, work: Path, config_file: Path = CONFIG, artifacts: Path | None = None, limit_eyes: int = 0) -> dict:
    """All five steps; the report is also written to `work/figures.json`. `artifacts`: where a network that
    earns its place is shipped (default the shipped models' folder)."""
    from device.lab.progression_pairs import build_pairs
    from device.screening.pipeline import ScreeningPipeline
    from device.screening.progression import PROGRESSION_POLICY, ProgressionPolicy
    from models import onnx_export
    from models.progression_net import load_config, read_pairs, train
    from models.runtime import registry

    artifacts = artifacts or registry.ARTIFACTS
    config = load_config(config_file)
    work.mkdir(parents=True, exist_ok=True)
    pairs_file = work / "pairs.npz"
    if pairs_file.exists():
        print(f"{pairs_file}: taken as built ({len(read_pairs(pairs_file))} pairs)", flush=True)
    else:
        noise = ProgressionPolicy.load(PROGRESSION_POLICY).noise_model
        build_pairs(ScreeningPipeline.from_artifacts(precision="fp32"), grape, noise, pairs_file, limit_eyes)
    log = train(config, work / "run", pairs_file)
    checkpoint = work / "run" / "best.pt"
    report: dict = {"config": config, "log": log, **measure(checkpoint, pairs_file)}
    candidate = work / "progression-candidate.onnx"
    onnx_export.main(["--checkpoint", str(checkpoint), "--out", str(candidate), "--name", "progression",
                      "--manifest", str(work / "candidate-manifest.json")])
    ships, why = earns_its_place(report["val"])
    report["candidate"] = str(candidate)
    report["shipped"], report["why"] = ships, ("shipped: " if ships else "not shipped: ") + why
    if ships:
        onnx_export.main(["--checkpoint", str(checkpoint), "--out", str(artifacts / "progression.onnx"), "--name", "progression"])
    (work / "figures.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device.lab.retrain_progression", description=__doc__.split("\n\n")[0])
    p.add_argument("--grape", type=Path, required=True, help="GRAPE folder (eyes.csv, visits.csv, rois/)")
    p.add_argument("--work", type=Path, required=True, help="folder for the pairs, the run, the candidate and figures.json")
    p.add_argument("--config", type=Path, default=CONFIG, help="training config (seed, epochs, change measures)")
    p.add_argument("--artifacts", type=Path, default=None,
                   help="where a network that earns its place is shipped (default: the shipped models' folder)")
    p.add_argument("--limit-eyes", type=int, default=0, help="the first N GRAPE eyes only, for a quick run (0: all)")
    a = p.parse_args(argv)
    if not (a.grape / "eyes.csv").is_file() or not (a.grape / "visits.csv").is_file():
        p.error(f"{a.grape} is not a GRAPE folder (it needs eyes.csv, visits.csv and rois/)")
    report = retrain(a.grape, a.work, a.config, a.artifacts, a.limit_eyes)
    print(json.dumps({k: report[k] for k in ("val", "test", "train", "shipped", "why")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
