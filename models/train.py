"""Training of the segmentation network from a JSON config, on CPU or GPU, resumable.

    python -m models.train --config models/configs/segmentation.json [--out runs/NAME] [--data DIR] [--resume]

Why it is built this way:
- Every photo is read and resampled once into an in-memory cache of two views (the whole photo
  letterboxed, and a disc-centred region twice the crop's side), because decoding 2-megapixel
  JPEGs every step would cost more than the network on a 2-core machine. Each step then needs one
  affine warp per sample (`models.augment`), which also carries the crop jitter.
- The two views are the two passes the screening pipeline runs: pass 1 on `whole_image_box`,
  pass 2 on `disc_crop_box` around the disc it found. Validation uses exactly `preprocess.warp` on
  those boxes (crops from the ground-truth disc), so its numbers are the pipeline's.
- Data order and augmentation derive from (seed, epoch, position), so a resumed run sees the same
  samples an uninterrupted one would.
- `mode` selects how the tasks share the network: "mtl" sums weighted losses under one AdamW;
  "mtl_io" gives each task its own Adam and lets the tasks step in turn (MTL-IO). `tasks` names the
  tasks that learn; one task under "mtl" is the single-task baseline (STL) of `models.compare`.
- Synthetic validation photos (`val_synthetic`) carry a fovea, which no real photo here has, so the
  fovea head is measured and selected on something.
- `device` "auto" trains on a GPU when torch sees one; augmentation stays on the CPU either way.
- Optional "geometry" ({view kind: Geometry fields}) and "camera" (Camera fields) sections widen the
  augmentation for networks that must hold on other cameras (`models.augment`); without them a run
  augments exactly as the shipped networks were trained. Each view remembers where its photo lies
  (`View.frame`), so a simulated camera's resolution and vignetting are measured against the photo,
  not the view (a disc crop spans a third to a half of the photo's width, at 2 to 3 times the whole
  view's scale).

Config keys are those of DEFAULTS. A source is {"folder", "splits" (from artifacts/splits.csv, or
null for every photo), "weight" (times per epoch), "limit" (first N photos, for quick runs)}.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from models.augment import (
    Camera,
    Colour,
    Frame,
    Geometry,
    apply_affine,
    apply_field_stop,
    box_affine,
    camera_look,
    field_of_view,
    from_config,
    recolour,
    sample_affine,
)
from models.datasets import DEFAULT_DATA, Record, decode_mask, disc_geometry, encode_mask, read_dataset, vcdr_from_masks
from models.losses import task_losses
from models.metrics import auc, dice
from models.net import build_net, parameter_count
from models.runtime.images import read_rgb
from models.runtime.preprocess import (
    INPUT_SIZE,
    Box,
    disc_crop_box,
    fovea_heatmap,
    heatmap_peak,
    normalize,
    warp,
    whole_image_box,
)
from models.splits import load_splits

REPO = Path(__file__).resolve().parents[1]
TASKS = ("disc", "cup", "fovea", "glaucoma")
VIEW_KINDS = ("whole", "disc")
CACHE_MARGIN = {"whole": 1.25, "disc": 2.0}  # cached region / nominal view side, room for jitter and rotation
GEOMETRY = {
    "whole": Geometry(shift=0.05, side=(0.9, 1.1), rotation_deg=15.0),
    # 0.05 of a 3-disc-diameter side = 0.15 disc diameters of centre jitter; side x U(0.8, 1.25).
    "disc": Geometry(shift=0.05, side=(0.8, 1.25), rotation_deg=15.0),
}

DEFAULTS: dict = {
    "name": "run",
    "seed": 1,
    "mode": "mtl",
    "epochs": 10,
    "batch_size": 8,
    "lr": 1e-3,
    "encoder_lr_scale": 0.5,
    "weight_decay": 1e-4,
    "warmup_steps": 30,
    "input_size": INPUT_SIZE,
    "threads": 2,
    "pretrained": True,
    "dropout": 0.5,
    "views": {"whole": 1, "disc": 1},
    "sources": [
        {"folder": "refuge-val", "splits": ["train"], "weight": 1.0},
        {"folder": "drishti-gs1", "splits": ["train"], "weight": 1.0},
    ],
    "val_sources": [
        {"folder": "refuge-val", "splits": ["val"]},
        {"folder": "drishti-gs1", "splits": ["val"]},
    ],
    "synthetic": {"count": 0, "weight": 1.0, "glaucoma_fraction": 0.3, "seed": 7},
    "loss_weights": {"disc": 1.0, "cup": 1.0, "fovea": 1.0, "glaucoma": 0.5},
    "tasks": list(TASKS),
    "val_synthetic": {"count": 0, "seed": 99},
    "device": "auto",
    "network": "segmentation",
    "geometry": {},
    "camera": None,
}
NETWORKS = ("segmentation", "disc_classifier")


class ConfigError(ValueError):
    """A training config that cannot be run; the message names the key."""


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """DEFAULTS, then the JSON file, then overrides; unknown keys are refused (typos would be silent)."""
    config = copy.deepcopy(DEFAULTS)
    given = json.loads(Path(path).read_text()) if path else {}
    given.update(overrides or {})
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}; known: {sorted(DEFAULTS)}")
    config.update(given)
    if config["mode"] not in ("mtl", "mtl_io"):
        raise ConfigError(f"mode {config['mode']!r} is not implemented (have: mtl, mtl_io)")
    bad_tasks = set(config["tasks"]) - set(TASKS)
    if bad_tasks or not config["tasks"]:
        raise ConfigError(f"tasks {sorted(bad_tasks) or '[]'} not known (have: {TASKS})")
    if config["network"] not in NETWORKS:
        raise ConfigError(f"network {config['network']!r} unknown (have: {NETWORKS})")
    if config["network"] == "disc_classifier" and (config["tasks"] != ["glaucoma"] or set(config["views"]) != {"disc"}):
        raise ConfigError('the disc classifier learns "tasks": ["glaucoma"] from "views": {"disc": 1} only')
    bad_views = set(config["views"]) - set(VIEW_KINDS)
    if bad_views:
        raise ConfigError(f"views {sorted(bad_views)} unknown (have: {VIEW_KINDS})")
    augmentation_from_config(config)
    return config


@dataclass(frozen=True)
class Augmentation:
    """What `augmented` does beyond the affine's crop jitter: the geometry of each view kind and,
    optionally, another camera's look. The defaults are what the shipped networks were trained with."""

    geometry: Mapping[str, Geometry] = field(default_factory=lambda: dict(GEOMETRY))
    camera: Camera | None = None


def augmentation_from_config(config: dict) -> Augmentation:
    """The config's "geometry" (per view kind, over GEOMETRY) and "camera" sections."""
    geometry = dict(GEOMETRY)
    try:
        for kind, section in (config.get("geometry") or {}).items():
            if kind not in GEOMETRY:
                raise ConfigError(f"geometry for view {kind!r} unknown (have: {VIEW_KINDS})")
            geometry[kind] = from_config(GEOMETRY[kind], section, f"geometry.{kind}")
        section = config.get("camera")
        camera = from_config(Camera(), section, "camera") if section is not None else None
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return Augmentation(geometry, camera)


# ---------------------------------------------------------------- the view cache

@dataclass
class View:
    """One cached view of a photo. `box` is the nominal network view inside `image`'s pixels."""

    key: tuple[str, str]
    kind: str
    image: np.ndarray
    mask: np.ndarray | None
    fovea: tuple[float, float] | None
    box: Box
    glaucoma: int | None
    frame: Frame | None = None  # the photo's centre and width in `image`'s pixels (for `camera_look`)


def _render(rgb: np.ndarray, mask: np.ndarray | None, fovea: tuple[float, float] | None, box: Box, size: int,
            margin: float) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None, Box]:
    """Resample the region `margin` x `box` (same centre) to a square of `margin` x `size` pixels."""
    side = box.side * margin
    outer = Box(box.x0 + box.side / 2 - side / 2, box.y0 + box.side / 2 - side / 2, side)
    out_size = int(round(size * margin))
    image = warp(rgb, outer, out_size)
    out_mask = warp(mask, outer, out_size, interp=cv2.INTER_LINEAR, border=255) if mask is not None else None
    out_fovea = outer.to_input(*fovea, size=out_size) if fovea is not None else None
    inner = (out_size - size) / 2.0
    return image, out_mask, out_fovea, Box(inner, inner, float(size))


def _photo_frame(shape: tuple[int, ...], box: Box, size: int, margin: float) -> Frame:
    """Where `_render` puts the photo: its centre and width in the rendered image's pixels."""
    h, w = shape[:2]
    side = box.side * margin
    x0, y0 = box.x0 + box.side / 2 - side / 2, box.y0 + box.side / 2 - side / 2
    scale = int(round(size * margin)) / side
    return ((w / 2.0 - x0) * scale, (h / 2.0 - y0) * scale, w * scale)


def photo_views(key: tuple[str, str], rgb: np.ndarray, mask: np.ndarray, fovea: tuple[float, float] | None,
                glaucoma: int | None, kinds, size: int, for_training: bool) -> list[View]:
    """The whole and disc views of one photo; training views keep a margin for augmentation."""
    disc, _ = decode_mask(mask)
    cx, cy, diameter = disc_geometry(disc)
    boxes = {"whole": whole_image_box(rgb.shape), "disc": disc_crop_box(cx, cy, diameter, rgb.shape)}
    views = []
    for kind in kinds:
        margin = CACHE_MARGIN[kind] if for_training else 1.0
        image, m, f, box = _render(rgb, mask, fovea, boxes[kind], size, margin)
        views.append(View(key, kind, image, m, f, box, glaucoma, _photo_frame(rgb.shape, boxes[kind], size, margin)))
    return views


def select_records(data: Path, source: dict, splits: dict[tuple[str, str], str]) -> list[Record]:
    folder = source["folder"]
    records = read_dataset(data / folder)
    wanted = source.get("splits")
    if wanted is not None:
        unknown = [r.id for r in records if (folder, r.id) not in splits]
        if unknown:
            raise ConfigError(f"{folder}: {len(unknown)} photos (e.g. {unknown[0]}) are not in splits.csv; "
                              f"give this source \"splits\": null to use all of them")
        records = [r for r in records if splits[(folder, r.id)] in wanted]
    records = [r for r in records if r.has_mask]
    if source.get("limit"):
        records = records[: int(source["limit"])]
    if not records:
        raise ConfigError(f"{folder}: no annotated photos in splits {wanted}")
    return records


def cache_sources(data: Path, sources: list[dict], kinds, size: int, for_training: bool) -> list[tuple[dict, list[View]]]:
    """Read every photo of every source once; returns (source, views) pairs."""
    splits = load_splits()
    out = []
    for source in sources:
        views = []
        for r in select_records(data, source, splits):
            rgb = read_rgb(r.image_path)
            views += photo_views((source["folder"], r.id), rgb, encode_mask(*r.load_mask(rgb.shape)),
                                 r.fovea, r.glaucoma, kinds, size, for_training)
        out.append((source, views))
    return out


def cache_synthetic(settings: dict, kinds, size: int, for_training: bool = True) -> list[View]:
    if not settings.get("count"):
        return []
    from models.synthetic import samples  # the generator is optional for runs on real photos only

    views = []
    for i, s in enumerate(samples(int(settings["count"]), int(settings.get("seed", 7)), size=(512, 512),
                                  glaucoma_fraction=float(settings.get("glaucoma_fraction", 0.3)))):
        views += photo_views(("synthetic", str(i)), s.image, s.mask, s.fovea, int(s.glaucoma), kinds, size,
                             for_training)
    return views


# ---------------------------------------------------------------- batches

def epoch_order(groups: list[tuple[float, list[View]]], seed: int, epoch: int) -> list[View]:
    """Each view appears `weight` times per epoch (the fraction by a seeded draw), shuffled by (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch, 0])
    items: list[View] = []
    for weight, views in groups:
        whole = int(math.floor(weight))
        for v in views:
            items += [v] * (whole + int(rng.random() < weight - whole))
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def make_batch(samples: list[tuple[np.ndarray, np.ndarray | None, tuple[float, float] | None, int | None]],
               size: int) -> dict[str, torch.Tensor]:
    """(image uint8, REFUGE mask, fovea in view pixels, glaucoma) per sample -> tensors."""
    images, discs, cups, heatmaps, fknown, labels, gknown = [], [], [], [], [], [], []
    for image, mask, fovea, glaucoma in samples:
        images.append(normalize(image))
        assert mask is not None  # every view carries its photo's mask (`photo_views` needs one)
        disc, cup = decode_mask(mask)
        discs.append(disc)
        cups.append(cup)
        heatmaps.append(fovea_heatmap(*fovea, size=size) if fovea is not None else np.zeros((size, size), np.float32))
        fknown.append(fovea is not None)
        labels.append(float(glaucoma or 0))
        gknown.append(glaucoma is not None)
    return {
        "image": torch.from_numpy(np.concatenate(images)).contiguous(memory_format=torch.channels_last),
        "disc": torch.from_numpy(np.stack(discs)[:, None].astype(np.float32)),
        "cup": torch.from_numpy(np.stack(cups)[:, None].astype(np.float32)),
        "fovea": torch.from_numpy(np.stack(heatmaps)[:, None]),
        "fovea_known": torch.tensor(fknown),
        "glaucoma": torch.tensor(labels)[:, None],
        "glaucoma_known": torch.tensor(gknown),
    }


def augmented(view: View, rng: np.random.Generator, size: int, augmentation: Augmentation | None = None):
    """One training sample of `view`: geometry, colour, then (if configured) another camera's look."""
    augmentation = augmentation or Augmentation()
    geometry = augmentation.geometry[view.kind]
    disc = _disc_centre(view.mask) if geometry.disc_offset_probability > 0 else None
    matrix = sample_affine(rng, view.box, size, geometry, disc)
    image, mask, fovea = apply_affine(view.image, view.mask, view.fovea, matrix, size)
    framing = matrix
    if geometry.field_stop:
        # the simulated camera's photo is the nominal view: its field stays there, the retina moved behind it
        framing = box_affine(view.box, size)
        image, mask, fovea = apply_field_stop(image, mask, fovea, field_of_view(view.image, framing, size))
    image = recolour(rng, image, Colour())
    if augmentation.camera is not None:
        image = camera_look(rng, image, augmentation.camera, _frame_in_view(view.frame, framing))
    return image, mask, fovea, view.glaucoma


def _disc_centre(mask: np.ndarray | None) -> tuple[float, float] | None:
    """The disc's centre in a cached view's pixels, if the view shows one."""
    if mask is None:
        return None
    disc, _ = decode_mask(mask)
    if not disc.any():
        return None
    cx, cy, _ = disc_geometry(disc)
    return cx, cy


def _frame_in_view(frame: Frame | None, matrix: np.ndarray) -> Frame | None:
    """A cached view's photo frame carried by the affine into the network's view."""
    if frame is None:
        return None
    x, y = matrix @ np.array([frame[0], frame[1], 1.0])
    return float(x), float(y), frame[2] * math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))


def plain(view: View, size: int):
    """The view as the pipeline sees it (validation views are cached at exactly `size`)."""
    if view.image.shape[0] != size:
        raise ValueError("validation views must be cached without a margin")
    return view.image, view.mask, view.fovea, view.glaucoma


# ---------------------------------------------------------------- validation

@torch.no_grad()
def predict(net: torch.nn.Module, views: list[View], size: int, batch_size: int) -> list[dict[str, np.ndarray]]:
    net.eval()
    outs = []
    for i in range(0, len(views), batch_size):
        batch = make_batch([plain(v, size) for v in views[i:i + batch_size]], size)
        out = net(batch["image"].to(_device_of(net)))
        for j in range(batch["image"].shape[0]):
            outs.append({k: v[j].float().cpu().numpy() for k, v in out.items()})
    return outs


def validate(net: torch.nn.Module, views: list[View], size: int, batch_size: int,
             tasks=TASKS) -> dict[str, float | None]:
    """Disc and cup Dice on ground-truth disc crops, disc Dice on whole views, vCDR MAE, glaucoma AUC,
    fovea error on whole views (in view pixels and in disc diameters); `score` weighs only `tasks`."""
    metrics: dict[str, list] = {"disc_dice": [], "cup_dice": [], "whole_disc_dice": [], "vcdr_abs_error": [],
                                "fovea_error_px": [], "fovea_error_dd": []}
    scores, labels = [], []
    for view, out in zip(views, predict(net, views, size, batch_size)):
        if "disc" not in out:  # a classifier: glaucoma on the disc crop only
            if view.kind == "disc" and view.glaucoma is not None:
                scores.append(float(out["glaucoma"][0]))
                labels.append(int(view.glaucoma))
            continue
        assert view.mask is not None  # every view carries its photo's mask (`photo_views` needs one)
        disc_true, cup_true = decode_mask(view.mask)
        disc_pred, cup_pred = out["disc"][0] > 0.5, out["cup"][0] > 0.5
        if view.kind == "whole":
            metrics["whole_disc_dice"].append(dice(disc_pred, disc_true))
            if view.fovea is not None and disc_true.any():
                fx, fy = heatmap_peak(out["fovea"][0])
                error = math.hypot(fx - view.fovea[0], fy - view.fovea[1])
                metrics["fovea_error_px"].append(error)
                metrics["fovea_error_dd"].append(error / float(disc_true.sum(axis=0).max()))
            continue
        metrics["disc_dice"].append(dice(disc_pred, disc_true))
        metrics["cup_dice"].append(dice(cup_pred, cup_true))
        predicted = vcdr_from_masks(disc_pred, cup_pred & disc_pred) if disc_pred.any() else 0.0
        metrics["vcdr_abs_error"].append(abs(predicted - vcdr_from_masks(disc_true, cup_true)))
        if view.glaucoma is not None:
            scores.append(float(out["glaucoma"][0]))
            labels.append(int(view.glaucoma))
    result: dict[str, float | None] = {k: (float(np.mean(v)) if v else None) for k, v in metrics.items()}
    result["vcdr_mae"] = result.pop("vcdr_abs_error")
    result["glaucoma_auc"] = auc(labels, scores)
    result["score"] = task_score(result, tasks)
    return result


def task_score(m: dict, tasks) -> float | None:
    """One number to pick the best epoch by: the mean over the trained tasks of a 0..1 figure each."""
    parts = []
    if "disc" in tasks and m["disc_dice"] is not None:
        parts.append(np.mean([v for v in (m["disc_dice"], m["whole_disc_dice"]) if v is not None]))
    if "cup" in tasks and m["cup_dice"] is not None:
        parts.append(m["cup_dice"] - (m["vcdr_mae"] or 0.0))
    if "fovea" in tasks and m["fovea_error_dd"] is not None:
        parts.append(1.0 - min(1.0, m["fovea_error_dd"]))
    if "glaucoma" in tasks and m["glaucoma_auc"] is not None:
        parts.append(m["glaucoma_auc"])
    return float(np.mean(parts)) if parts else None


def _device_of(net: torch.nn.Module) -> torch.device:
    return next(net.parameters()).device


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------- optimisation

def make_optimizers(net, config: dict) -> dict[str, torch.optim.Optimizer]:
    encoder = list(net.encoder.parameters())
    ids = {id(p) for p in encoder}
    rest = [p for p in net.parameters() if id(p) not in ids]
    groups = [{"params": encoder, "lr": config["lr"] * config["encoder_lr_scale"]},
              {"params": rest, "lr": config["lr"]}]
    if config["mode"] == "mtl":
        return {"all": torch.optim.AdamW(groups, lr=config["lr"], weight_decay=config["weight_decay"])}
    return {task: torch.optim.Adam(copy.copy(groups), lr=config["lr"]) for task in config["tasks"]}


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizers: dict, config: dict, factor: float) -> None:
    for opt in optimizers.values():
        opt.param_groups[0]["lr"] = config["lr"] * config["encoder_lr_scale"] * factor
        opt.param_groups[1]["lr"] = config["lr"] * factor


def train_step(net, optimizers: dict, batch: dict, config: dict) -> dict[str, float]:
    weights, tasks = config["loss_weights"], config["tasks"]
    net.train()
    if config["mode"] == "mtl":
        opt = optimizers["all"]
        opt.zero_grad(set_to_none=True)
        losses = task_losses(net(batch["image"]), batch, tasks)
        total = sum(weights[t] * losses[t] for t in tasks)
        total.backward()
        opt.step()
        return {**{t: float(losses[t].detach()) for t in tasks}, "total": float(total.detach())}
    logged = {}
    for task in tasks:  # MTL-IO: each task its own forward, backward and optimizer, in turn
        if task == "fovea" and not bool(batch["fovea_known"].any()):
            continue
        if task == "glaucoma" and not bool(batch["glaucoma_known"].any()):
            continue
        opt = optimizers[task]
        opt.zero_grad(set_to_none=True)
        loss = task_losses(net(batch["image"]), batch, (task,))[task]
        (weights[task] * loss).backward()
        opt.step()
        logged[task] = float(loss.detach())
    logged["total"] = sum(weights[t] * v for t, v in logged.items())
    return logged


def build_network(config: dict, pretrained: bool | None = None) -> torch.nn.Module:
    pretrained = bool(config["pretrained"]) if pretrained is None else pretrained
    if config.get("network", "segmentation") == "disc_classifier":
        from models.classifier import build_classifier

        return build_classifier(pretrained=pretrained, dropout=float(config["dropout"]))
    return build_net(pretrained=pretrained, dropout=float(config["dropout"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _save(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(config: dict, out: Path, data: Path = DEFAULT_DATA, resume: bool = False, progress: bool = True) -> list[dict]:
    """Run (or resume) training; writes last.pt, best.pt, config.json and log.json into `out`."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(config["threads"]))
    cv2.setNumThreads(int(config["threads"]))
    seed_everything(int(config["seed"]))
    device = pick_device(config["device"])
    size, kinds = int(config["input_size"]), [k for k, n in config["views"].items() if n]

    started = time.time()
    train_groups = []
    for source, views in cache_sources(data, config["sources"], kinds, size, for_training=True):
        for kind in kinds:
            train_groups.append((float(source.get("weight", 1.0)) * config["views"][kind],
                                 [v for v in views if v.kind == kind]))
    synthetic = cache_synthetic(config["synthetic"], kinds, size)
    for kind in kinds:
        if synthetic:
            train_groups.append((float(config["synthetic"].get("weight", 1.0)) * config["views"][kind],
                                 [v for v in synthetic if v.kind == kind]))
    # a disc-crop classifier is judged on disc crops only: the whole views would be predicted and dropped
    val_kinds = ("disc",) if config["network"] == "disc_classifier" else VIEW_KINDS
    val_views = [v for _, views in cache_sources(data, config["val_sources"], val_kinds, size, for_training=False)
                 for v in views]
    val_views += cache_synthetic({**config["val_synthetic"], "glaucoma_fraction": 0.3}, val_kinds, size,
                                 for_training=False)
    print(f"cached {sum(len(v) for _, v in train_groups)} training views, {len(val_views)} validation views "
          f"in {time.time() - started:.0f}s", flush=True)

    augmentation = augmentation_from_config(config)
    net = build_network(config)
    net = net.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format at runtime; torch's overloads omit it
    optimizers = make_optimizers(net, config)
    steps_per_epoch = math.ceil(len(epoch_order(train_groups, int(config["seed"]), 0)) / int(config["batch_size"]))
    total_steps = steps_per_epoch * int(config["epochs"])
    log: list[dict] = []
    first_epoch, best = 0, -math.inf
    if resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location=device, weights_only=False)
        net.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        first_epoch, best, log = state["epoch"] + 1, state["best_score"], state["log"]
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed after epoch {state['epoch']} from {out / 'last.pt'}", flush=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))

    step = first_epoch * steps_per_epoch
    for epoch in range(first_epoch, int(config["epochs"])):
        epoch_started, step_seconds = time.time(), 0.0
        order = epoch_order(train_groups, int(config["seed"]), epoch)
        sums: dict[str, float] = {}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config['epochs']}", disable=not progress,
                   mininterval=5.0)
        for b in bar:
            chunk = order[b * config["batch_size"]:(b + 1) * config["batch_size"]]
            if not chunk:
                break
            samples = [augmented(v, np.random.default_rng([int(config["seed"]), epoch, b, i]), size, augmentation)
                       for i, v in enumerate(chunk)]
            set_lr(optimizers, config, lr_factor(step, total_steps, int(config["warmup_steps"])))
            batch = {k: v.to(device, non_blocking=True) for k, v in make_batch(samples, size).items()}
            step_started = time.perf_counter()
            losses = train_step(net, optimizers, batch, config)
            step_seconds += time.perf_counter() - step_started
            step += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix({k: f"{v / (b + 1):.3f}" for k, v in sums.items()})
        metrics = validate(net, val_views, size, int(config["batch_size"]), config["tasks"]) if val_views else {}
        entry = {"epoch": epoch + 1, "steps": step, "seconds": round(time.time() - epoch_started, 1),
                 "seconds_per_step": round(step_seconds / steps_per_epoch, 5),
                 "train_loss": {k: v / steps_per_epoch for k, v in sums.items()}, "val": metrics}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        score = metrics.get("score")
        is_best = score is not None and score > best
        best = max(best, score) if score is not None else best
        state = {"model": net.state_dict(), "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "epoch": epoch, "best_score": best, "log": log, "config": config,
                 "parameters": parameter_count(net), "torch_rng": torch.get_rng_state()}
        _save(out / "last.pt", state)
        if is_best or not (out / "best.pt").exists():
            shutil.copyfile(out / "last.pt", out / "best.pt")
        (out / "log.json").write_text(json.dumps(log, indent=2))
    return log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the segmentation network.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="run folder (default runs/<config name>)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding the dataset folders")
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    out = args.out or REPO / "runs" / config["name"]
    if not args.data.is_dir():
        parser.error(f"data folder not found: {args.data} (pass --data)")
    train(config, out, args.data, resume=args.resume)


if __name__ == "__main__":
    main()
