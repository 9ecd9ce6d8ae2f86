"""The progression engine: has this eye's optic disc changed since an earlier visit?

    glaucoscreen retrain-progression --grape DIR --work DIR   (builds the registered pairs, trains, measures, ships if earned)
    python -m models.progression_net train --config models/configs/progression.json --pairs PAIRS.npz [--out DIR]

Why this shape: glaucoma progresses as the cup widens and the rim thins, slowly, while the photos of
two visits differ far more in framing, exposure and camera. So the network compares two photos that
are already lined up: the earlier photo is registered onto today's with the unit's own registration
(`device.screening.registration`) and both are cut through today's disc crop, so that a pixel of one
is the same place of the eye in the other. A siamese encoder (the first stages of the same
ImageNet-pretrained EfficientNet-Lite0, shared by both visits) sees the current disc and the
difference from the earlier one; beside the pooled features go the years between the visits and the
noise-aware change measures the unit computes on the same pair (`change_features`: each measure's
change towards worsening in units of its noise, `device.screening.progression.features`). 265 k
parameters: GRAPE has 54 progressing eyes, and a larger network would only memorise them.

Data: a file of registered pairs (`write_pairs`, built by `device.lab.progression_pairs` from GRAPE:
every earlier photo of an eye registered onto its last, as the unit measures a visit against the
eye's earlier ones), with the patient split of `models.grape` (train / val / test by patient). The
geometric augmentation is the same for both photos of a pair, so that it never undoes the
registration; the colour augmentation is each photo's own, as two visits' exposures differ. The
validation score is the eye's first-against-last pair, as the unit compares a visit with the eye's
first; the checkpoint kept is the last epoch's (`keep`), so that the validation interval the ship rule
reads was not also used to choose the epoch.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.augment import Colour, recolour
from models.metrics import auc
from models.net import LiteStem, load_pretrained_encoder, parameter_count
from models.runtime.preprocess import normalize

SIZE = 160
MARGIN = 1.2  # the pairs file holds each crop 1.2 times wider than the network's view: room to turn and zoom
PAIR_SIDE = int(round(SIZE * MARGIN))
ENCODER_BLOCKS = 8  # through the 80-channel stage: stride 16
REPO = Path(__file__).resolve().parents[1]

DEFAULTS: dict = {
    "name": "progression",
    "network": "progression",
    "inputs": "registered",  # the earlier photo registered onto today's, both cut through today's disc crop
    "change_features": ["z_vcdr", "z_cup_area", "z_rim_superior", "z_rim_inferior"],
    "seed": 3,
    "epochs": 8,
    "batch_size": 32,
    "lr": 1e-3,
    "encoder_lr_scale": 0.3,
    "weight_decay": 1e-4,
    "threads": 2,
    "pretrained": True,
    "dropout": 0.5,
    "keep": "last",  # "last" epoch, or "best_val" (the epoch with the best validation AUC)
    "device": "auto",
}


class ProgressionNet(nn.Module):
    """forward(earlier, current, years[, change]) -> progression logit (N x 1). `change_features`: how many
    noise-aware change measures go in beside the years (0: none, the first network's inputs)."""

    def __init__(self, dropout: float = 0.5, width: int = 64, change_features: int = 0):
        super().__init__()
        self.encoder = LiteStem(ENCODER_BLOCKS)
        self.change_features = change_features
        c = self.encoder.out_channels
        self.mix = nn.Sequential(nn.Conv2d(2 * c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width + 1 + change_features, 1))

    def forward(self, earlier: torch.Tensor, current: torch.Tensor, years: torch.Tensor,
                change: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.encoder(earlier), self.encoder(current)
        y = self.mix(torch.cat([b, b - a], dim=1))
        parts = [y.mean(dim=(2, 3)), y.amax(dim=(2, 3)), torch.log1p(years.clamp_min(0))]
        if self.change_features:
            if change is None:
                raise ValueError(f"this network takes {self.change_features} change measures beside the photos")
            parts.append(change)
        return self.head(torch.cat(parts, dim=1))


def build_progression_net(pretrained: bool = True, dropout: float = 0.5, change_features: int = 0) -> ProgressionNet:
    net = ProgressionNet(dropout=dropout, change_features=change_features)
    if pretrained:
        load_pretrained_encoder(net.encoder)
    return net


# ---------------------------------------------------------------- data

PAIR_ARRAYS = ("earlier", "current", "years", "change", "change_names", "progressed", "patient", "eye", "split", "first",
               "correlation")


@dataclass
class Pairs:
    """Registered visit pairs, one row each: the earlier photo lined up with the later one and both cut through
    the later photo's disc crop, MARGIN times wider than the network's view (uint8 RGB, PAIR_SIDE square);
    the years between them, the change measures (`change_names`) of the pair, whether the eye progressed, its
    patient, split and key, whether the pair is the eye's first photo against its last (`first`: what is
    scored), and the registration's vessel correlation."""

    earlier: np.ndarray
    current: np.ndarray
    years: np.ndarray
    change: np.ndarray
    change_names: np.ndarray
    progressed: np.ndarray
    patient: np.ndarray
    eye: np.ndarray
    split: np.ndarray
    first: np.ndarray
    correlation: np.ndarray

    def __len__(self) -> int:
        return len(self.years)

    def subset(self, keep: np.ndarray) -> "Pairs":
        return Pairs(**{k: getattr(self, k) if k == "change_names" else getattr(self, k)[keep] for k in PAIR_ARRAYS})

    def part(self, split: str, first_only: bool = False) -> "Pairs":
        keep = self.split == split
        return self.subset(keep & self.first if first_only else keep)

    def features(self, names: list[str]) -> np.ndarray:
        """The change measures `names` (N x len(names)); one the file does not hold is an error, not a zero."""
        have = [str(n) for n in self.change_names]
        missing = [n for n in names if n not in have]
        if missing:
            raise ValueError(f"the pairs file has no change measure {missing}; it has {have}")
        return self.change[:, [have.index(n) for n in names]].astype(np.float32).reshape(len(self), len(names))


def write_pairs(path: Path, rows: list[dict], change_names: list[str]) -> Pairs:
    """`rows`: one dict a pair with the fields of `Pairs` (crops, years, change as a list in `change_names`
    order, ...). Written compressed: 350 pairs of 192 px crops."""
    n = len(rows)
    empty = np.zeros((0, PAIR_SIDE, PAIR_SIDE, 3), np.uint8)
    pairs = Pairs(
        earlier=np.stack([r["earlier"] for r in rows]) if n else empty,
        current=np.stack([r["current"] for r in rows]) if n else empty,
        years=np.array([r["years"] for r in rows], np.float32),
        change=np.array([r["change"] for r in rows], np.float32).reshape(n, len(change_names)),
        change_names=np.array(change_names, dtype=str),
        progressed=np.array([r["progressed"] for r in rows], np.int8),
        patient=np.array([r["patient"] for r in rows], dtype=str),
        eye=np.array([r["eye"] for r in rows], dtype=str),
        split=np.array([r["split"] for r in rows], dtype=str),
        first=np.array([r["first"] for r in rows], bool),
        correlation=np.array([r["correlation"] for r in rows], np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez_compressed(f, **{k: getattr(pairs, k) for k in PAIR_ARRAYS})
    return pairs


def read_pairs(path: Path) -> Pairs:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no registered pairs at {path}: `glaucoscreen retrain-progression --grape DIR --work DIR` "
                                f"builds them from GRAPE")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in PAIR_ARRAYS if k not in f]
        if missing:
            raise ValueError(f"{path} is not a registered pairs file: {missing} missing")
        return Pairs(**{k: f[k] for k in PAIR_ARRAYS})


def augment_pair(rng: np.random.Generator, earlier: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One random turn, zoom, shift and flip for both photos (they stay lined up), then each photo's own colours."""
    side = earlier.shape[0]
    c = (side / 2 + rng.uniform(-0.04, 0.04) * side, side / 2 + rng.uniform(-0.04, 0.04) * side)
    m = cv2.getRotationMatrix2D(c, rng.uniform(-15, 15), rng.uniform(0.9, 1.15) * PAIR_SIDE / side)
    m[:, 2] += (SIZE / 2 - c[0], SIZE / 2 - c[1])
    flip = rng.random() < 0.5
    out = []
    for crop in (earlier, current):
        view = cv2.warpAffine(crop, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if flip:
            view = view[:, ::-1]
        out.append(recolour(rng, np.ascontiguousarray(view), Colour()))
    return out[0], out[1]


def centre(crop: np.ndarray) -> np.ndarray:
    """The nominal view of a cached crop: its central 1/MARGIN, as the unit's crop is framed."""
    side = crop.shape[0]
    inner = int(round(side / MARGIN))
    o = (side - inner) // 2
    return cv2.resize(crop[o:o + inner, o:o + inner], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def to_tensors(earlier: list[np.ndarray], current: list[np.ndarray], years: np.ndarray, change: np.ndarray,
               labels: np.ndarray) -> dict[str, torch.Tensor]:
    return {"earlier": torch.from_numpy(np.concatenate([normalize(a) for a in earlier])),
            "current": torch.from_numpy(np.concatenate([normalize(b) for b in current])),
            "years": torch.from_numpy(np.asarray(years, np.float32).reshape(-1, 1)),
            "change": torch.from_numpy(np.asarray(change, np.float32).reshape(len(years), -1)),
            "label": torch.from_numpy(np.asarray(labels, np.float32).reshape(-1, 1))}


def _run(net: ProgressionNet, t: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    change = t["change"].to(device) if net.change_features else None
    return net(t["earlier"].to(device), t["current"].to(device), t["years"].to(device), change)


@torch.no_grad()
def pair_scores(net: ProgressionNet, pairs: Pairs, names: list[str], batch_size: int = 64) -> np.ndarray:
    """The logit of each pair, through its nominal (unaugmented) view."""
    net.eval()
    device = next(net.parameters()).device
    feats = pairs.features(names)
    out = np.zeros(len(pairs), np.float32)
    for k in range(0, len(pairs), batch_size):
        s = slice(k, k + batch_size)
        t = to_tensors([centre(a) for a in pairs.earlier[s]], [centre(b) for b in pairs.current[s]], pairs.years[s],
                       feats[s], pairs.progressed[s])
        out[s] = _run(net, t, device).float().cpu().numpy()[:, 0]
    return out


# ---------------------------------------------------------------- training

def train(config: dict, out: Path, pairs_file: Path) -> list[dict]:
    from models.train import pick_device, seed_everything

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(config["threads"]))
    seed_everything(int(config["seed"]))
    device = pick_device(config["device"])
    names = list(config["change_features"])
    pairs = read_pairs(pairs_file)
    training, val = pairs.part("train"), pairs.part("val", first_only=True)
    train_feats = training.features(names)
    if not len(training) or not len(val):
        raise ValueError(f"{pairs_file} has {len(training)} training pairs and {len(val)} validation eyes; both are needed")
    progressing = {e for e, y in zip(training.eye, training.progressed) if y}
    print(f"{len(training)} registered training pairs of {len(set(training.eye))} eyes ({len(progressing)} progressing); "
          f"val {len(val)} eyes ({int(val.progressed.sum())} progressing)", flush=True)
    net = build_progression_net(bool(config["pretrained"]), float(config["dropout"]), len(names)).to(device)
    enc = list(net.encoder.parameters())
    ids = {id(p) for p in enc}
    opt = torch.optim.AdamW([{"params": enc, "lr": config["lr"] * config["encoder_lr_scale"]},
                             {"params": [p for p in net.parameters() if id(p) not in ids]}],
                            lr=config["lr"], weight_decay=config["weight_decay"])
    batch_size = int(config["batch_size"])
    steps = math.ceil(len(training) / batch_size) * int(config["epochs"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[config["lr"] * config["encoder_lr_scale"], config["lr"]],
                                                total_steps=steps, pct_start=0.1)
    positives = int(training.progressed.sum())
    pos_weight = torch.tensor([(len(training) - positives) / max(1, positives)], device=device)
    log: list[dict] = []
    best = -math.inf
    for epoch in range(int(config["epochs"])):
        net.train()
        rng = np.random.default_rng([int(config["seed"]), epoch])
        order = rng.permutation(len(training))
        total, t0 = 0.0, time.time()
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            views = [augment_pair(rng, training.earlier[i], training.current[i]) for i in idx]
            batch = to_tensors([v[0] for v in views], [v[1] for v in views], training.years[idx], train_feats[idx],
                               training.progressed[idx])
            loss = F.binary_cross_entropy_with_logits(_run(net, batch, device), batch["label"].to(device), pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        val_auc = auc(val.progressed, pair_scores(net, val, names))
        entry = {"epoch": epoch + 1, "loss": total / len(training), "val_auc": val_auc, "seconds": round(time.time() - t0, 1)}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        last = epoch + 1 == int(config["epochs"])
        better = False
        if val_auc is not None and val_auc > best:
            better, best = True, val_auc
        if (config["keep"] == "best_val" and better) or (config["keep"] == "last" and last):
            torch.save({"model": net.state_dict(), "config": config, "log": log, "epoch": epoch + 1,
                        "parameters": parameter_count(net)}, out / "best.pt")
    (out / "log.json").write_text(json.dumps(log, indent=2))
    return log


def load_config(path: Path | None, overrides: dict | None = None) -> dict:
    config = dict(DEFAULTS)
    given = {**(json.loads(Path(path).read_text()) if path else {}), **(overrides or {})}
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    config.update(given)
    if config["keep"] not in ("last", "best_val"):
        raise ValueError(f"keep must be 'last' or 'best_val', not {config['keep']!r}")
    if config["inputs"] != "registered":
        raise ValueError(f"the progression network trains on registered pairs only (inputs 'registered', not {config['inputs']!r})")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the progression engine on registered visit pairs.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--pairs", type=Path, help="registered pairs (`glaucoscreen retrain-progression` builds them)")
    t.add_argument("--out", type=Path)
    t.add_argument("--data", type=Path, help=argparse.SUPPRESS)  # `glaucoscreen train` passes it; the pairs carry the photos
    args = parser.parse_args(argv)
    if args.command == "train":
        if args.pairs is None:
            parser.error("the progression network trains on registered visit pairs: give --pairs, or run "
                         "`glaucoscreen retrain-progression --grape DIR --work DIR`, which builds them and trains")
        config = load_config(args.config)
        train(config, args.out or REPO / "runs" / config["name"], args.pairs)


if __name__ == "__main__":
    main()
