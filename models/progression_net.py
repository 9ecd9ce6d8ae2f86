"""The progression engine: has this eye's optic disc changed since an earlier visit?

    python -m models.progression_net train --config models/configs/progression.json [--out runs/progression]

Why this shape: glaucoma progresses as the cup widens and the rim thins, slowly, while the photos of
two visits differ far more in framing, exposure and camera. A siamese encoder (the first stages of
the same ImageNet-pretrained EfficientNet-Lite0, shared by both visits) sees the current disc and the
difference from the earlier one, so the head can learn change rather than appearance; the years
between the visits go in beside the pooled features. 265 k parameters: GRAPE has 54 progressing eyes,
and a larger network would only memorise them.

Data: GRAPE's disc crops (an eye progresses if PLR2, PLR3 or MD says so; patients split into
train/val/test, `models.grape`) and synthetic longitudinal eyes whose cup grows at a known rate.
A training pair is any earlier and later photo of one eye; evaluation uses each eye's first and last
photo, as the unit compares a visit with the eye's first.
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
from models.datasets import DEFAULT_DATA
from models.grape import Eye, patient_split, read_grape
from models.metrics import auc
from models.net import LiteStem, load_pretrained_encoder, parameter_count
from models.runtime.images import read_rgb
from models.runtime.preprocess import normalize

SIZE = 160
ENCODER_BLOCKS = 8  # through the 80-channel stage: stride 16
REPO = Path(__file__).resolve().parents[1]

DEFAULTS: dict = {
    "name": "progression",
    "network": "progression",
    "seed": 3,
    "epochs": 30,
    "batch_size": 32,
    "lr": 1e-3,
    "encoder_lr_scale": 0.3,
    "weight_decay": 1e-4,
    "threads": 2,
    "pretrained": True,
    "dropout": 0.5,
    "grape_folder": "grape",
    "synthetic_eyes": 240,
    "synthetic_seed": 11,
    "device": "auto",
    "limit_eyes": 0,  # first N eyes of each split, for quick runs; 0 = all
}


class ProgressionNet(nn.Module):
    """forward(earlier, current, years) -> progression logit (N x 1)."""

    def __init__(self, dropout: float = 0.5, width: int = 64):
        super().__init__()
        self.encoder = LiteStem(ENCODER_BLOCKS)
        c = self.encoder.out_channels
        self.mix = nn.Sequential(nn.Conv2d(2 * c, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width + 1, 1))

    def forward(self, earlier: torch.Tensor, current: torch.Tensor, years: torch.Tensor) -> torch.Tensor:
        a, b = self.encoder(earlier), self.encoder(current)
        y = self.mix(torch.cat([b, b - a], dim=1))
        pooled = torch.cat([y.mean(dim=(2, 3)), y.amax(dim=(2, 3)), torch.log1p(years.clamp_min(0))], dim=1)
        return self.head(pooled)


def build_progression_net(pretrained: bool = True, dropout: float = 0.5) -> ProgressionNet:
    net = ProgressionNet(dropout=dropout)
    if pretrained:
        load_pretrained_encoder(net.encoder)
    return net


# ---------------------------------------------------------------- data

@dataclass
class Series:
    """One eye's disc crops (uint8 RGB, square, SIZE * 1.2 for augmentation room) and visit years."""

    key: str
    patient: str
    progressed: int
    crops: list[np.ndarray]
    years: list[float]


def square_crop(rgb: np.ndarray, side: int) -> np.ndarray:
    """The centred square of a disc crop, resampled to `side` pixels."""
    h, w = rgb.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return cv2.resize(rgb[y0:y0 + s, x0:x0 + s], (side, side), interpolation=cv2.INTER_AREA)


def grape_series(eyes: list[Eye], side: int) -> list[Series]:
    out = []
    for e in eyes:
        crops = [square_crop(read_rgb(v.photo), side) for v in e.visits]
        out.append(Series(e.key, e.patient, e.progressed, crops, [v.years for v in e.visits]))
    return out


def synthetic_series(count: int, seed: int, side: int) -> list[Series]:
    """Eyes photographed at three visits over 2-5 years; half progress at 0.02-0.05 vCDR a year, half
    stay within 0.003 (age and measurement drift)."""
    from models.datasets import decode_mask, disc_geometry
    from models.runtime.preprocess import disc_crop_box, warp
    from models.synthetic import progress, random_eye, render

    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        progressed = int(i % 2)
        eye = random_eye(int(rng.integers(0, 2**31 - 1)), glaucoma=bool(rng.random() < 0.5))
        span = float(rng.uniform(2.0, 5.0))
        years = [0.0, span / 2, span]
        rate = float(rng.uniform(0.02, 0.05)) if progressed else float(rng.uniform(0.0, 0.003))
        crops = []
        for t in years:
            s = render(progress(eye, t, rate=rate), (512, 512), seed=int(rng.integers(0, 2**31 - 1)))
            cx, cy, d = disc_geometry(decode_mask(s.mask)[0])
            crops.append(warp(s.image, disc_crop_box(cx, cy, d * float(rng.uniform(0.85, 1.15)), s.image.shape), side))
        out.append(Series(f"synthetic_{i}", f"synthetic_{i}", progressed, crops, years))
    return out


def augment(rng: np.random.Generator, crop: np.ndarray) -> np.ndarray:
    """Random rotation, zoom and shift inside the cached margin, a flip, then `models.augment`'s colours."""
    side = crop.shape[0]
    c = (side / 2 + rng.uniform(-0.04, 0.04) * side, side / 2 + rng.uniform(-0.04, 0.04) * side)
    m = cv2.getRotationMatrix2D(c, rng.uniform(-15, 15), rng.uniform(0.9, 1.15) * SIZE * 1.2 / side)
    m[:, 2] += (SIZE / 2 - c[0], SIZE / 2 - c[1])
    out = cv2.warpAffine(crop, m, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return recolour(rng, np.ascontiguousarray(out), Colour())


def centre(crop: np.ndarray) -> np.ndarray:
    """The nominal view of a cached crop: its central SIZE/(1.2 SIZE), as the unit's crop is framed."""
    side = crop.shape[0]
    inner = int(round(side / 1.2))
    o = (side - inner) // 2
    return cv2.resize(crop[o:o + inner, o:o + inner], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def training_pairs(series: list[Series]) -> list[tuple[Series, int, int]]:
    return [(s, i, j) for s in series for i in range(len(s.crops)) for j in range(i + 1, len(s.crops))]


def to_tensors(pairs: list[tuple[np.ndarray, np.ndarray, float, int]]) -> dict[str, torch.Tensor]:
    a = np.concatenate([normalize(p[0]) for p in pairs])
    b = np.concatenate([normalize(p[1]) for p in pairs])
    return {"earlier": torch.from_numpy(a), "current": torch.from_numpy(b),
            "years": torch.tensor([[p[2]] for p in pairs], dtype=torch.float32),
            "label": torch.tensor([[float(p[3])] for p in pairs])}


@torch.no_grad()
def eye_scores(net: ProgressionNet, series: list[Series], batch_size: int = 64) -> np.ndarray:
    """The logit of each eye's first-vs-last photo (eyes with one photo score 0, 'no evidence')."""
    net.eval()
    device = next(net.parameters()).device
    scores = np.zeros(len(series), np.float32)
    idx = [i for i, s in enumerate(series) if len(s.crops) > 1]
    for k in range(0, len(idx), batch_size):
        chunk = [series[i] for i in idx[k:k + batch_size]]
        t = to_tensors([(centre(s.crops[0]), centre(s.crops[-1]), s.years[-1] - s.years[0], s.progressed)
                        for s in chunk])
        logits = net(t["earlier"].to(device), t["current"].to(device), t["years"].to(device))
        scores[idx[k:k + batch_size]] = logits.float().cpu().numpy()[:, 0]
    return scores


def split_series(config: dict, data: Path) -> dict[str, list[Series]]:
    eyes = read_grape(data / config["grape_folder"])
    split = patient_split(eyes)
    side = int(round(SIZE * 1.2))
    eyes = [e for e in eyes if len(e.visits) >= 2]  # after the split, so the split never depends on this rule
    limit = int(config.get("limit_eyes") or 0) or None
    out = {name: grape_series([e for e in eyes if split[e.patient] == name][:limit], side)
           for name in ("train", "val", "test")}
    return out


# ---------------------------------------------------------------- training

def train(config: dict, out: Path, data: Path = DEFAULT_DATA) -> list[dict]:
    from models.train import pick_device, seed_everything

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(config["threads"]))
    seed_everything(int(config["seed"]))
    device = pick_device(config["device"])
    started = time.time()
    splits = split_series(config, data)
    synthetic = synthetic_series(int(config["synthetic_eyes"]), int(config["synthetic_seed"]), int(round(SIZE * 1.2)))
    pairs = training_pairs(splits["train"] + synthetic)
    print(f"{len(splits['train'])} GRAPE training eyes, {len(synthetic)} synthetic, {len(pairs)} pairs; "
          f"val {len(splits['val'])} eyes; cached in {time.time() - started:.0f}s", flush=True)
    net = build_progression_net(bool(config["pretrained"]), float(config["dropout"])).to(device)
    enc = list(net.encoder.parameters())
    ids = {id(p) for p in enc}
    opt = torch.optim.AdamW([{"params": enc, "lr": config["lr"] * config["encoder_lr_scale"]},
                             {"params": [p for p in net.parameters() if id(p) not in ids]}],
                            lr=config["lr"], weight_decay=config["weight_decay"])
    steps = math.ceil(len(pairs) / config["batch_size"]) * config["epochs"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[config["lr"] * config["encoder_lr_scale"], config["lr"]],
                                                total_steps=steps, pct_start=0.1)
    positives = sum(s.progressed for s, _, _ in pairs)
    pos_weight = torch.tensor([(len(pairs) - positives) / max(1, positives)], device=device)
    log, best = [], -math.inf
    for epoch in range(int(config["epochs"])):
        net.train()
        rng = np.random.default_rng([int(config["seed"]), epoch])
        order = rng.permutation(len(pairs))
        total, t0 = 0.0, time.time()
        for b in range(0, len(order), int(config["batch_size"])):
            chunk = [pairs[i] for i in order[b:b + int(config["batch_size"])]]
            batch = to_tensors([(augment(rng, s.crops[i]), augment(rng, s.crops[j]), s.years[j] - s.years[i],
                                 s.progressed) for s, i, j in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = F.binary_cross_entropy_with_logits(net(batch["earlier"], batch["current"], batch["years"]),
                                                      batch["label"], pos_weight=pos_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(chunk)
        val_auc = auc([s.progressed for s in splits["val"]], list(eye_scores(net, splits["val"])))
        entry = {"epoch": epoch + 1, "loss": total / len(pairs), "val_auc": val_auc, "seconds": round(time.time() - t0, 1)}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        if val_auc is not None and val_auc > best:
            best = val_auc
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
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train or evaluate the progression engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--config", type=Path, required=True)
    t.add_argument("--out", type=Path)
    t.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if args.command == "train":
        config = load_config(args.config)
        train(config, args.out or REPO / "runs" / config["name"], args.data)


if __name__ == "__main__":
    main()
