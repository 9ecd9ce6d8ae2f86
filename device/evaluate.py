"""`glaucoscreen evaluate`: how good the screening is on a folder of annotated photos.

Runs the same pipeline the unit runs, photo by photo, and compares with the experts' masks and
labels. Dice is measured on the photo's own pixel grid; the glaucoma figures use every photo with a
label and a score; ungradable photos count in `ungradable_rate` and still get segmented, so a
strict quality gate does not hide a weak model.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from device.measurements import dice
from device.pipeline import ScreeningPipeline, screen_file
from device.roc import auc, sensitivity_at_specificity
from models.datasets import Record, load_mask, read_dataset, vcdr_from_masks
from models.splits import load_splits


def evaluate_records(pipeline: ScreeningPipeline, records: list[Record], progress: bool = False) -> dict:
    rows = []
    t0 = time.perf_counter()
    for i, rec in enumerate(records):
        row, rgb, result = screen_file(pipeline, rec.image_path)
        out = {
            "id": rec.id, "source": rec.source, "ok": row["ok"], "error": row.get("error"),
            "gradable": row.get("gradable"), "referral": row.get("referral"),
            "glaucoma": rec.glaucoma, "glaucoma_probability": row.get("glaucoma_probability"),
            "vcdr": row.get("vcdr"), "vcdr_expert": rec.vcdr,
            "quality_reasons": [r["code"] for r in (row.get("quality") or {}).get("reasons", [])],
        }
        if rec.mask_path is not None and result is not None:
            disc_gt, cup_gt = load_mask(rec.mask_path)
            if out["vcdr_expert"] is None:
                out["vcdr_expert"] = vcdr_from_masks(disc_gt, cup_gt)
            if result.segmentation is not None:
                disc, cup = result.segmentation.masks_on_photo(rgb.shape)
            else:
                disc = cup = np.zeros(disc_gt.shape, bool)
            out["disc_dice"] = dice(disc, disc_gt)
            out["cup_dice"] = dice(cup, cup_gt)
        rows.append(out)
        if progress:
            print(f"\r{i + 1}/{len(records)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    summary = summarize(rows)
    summary["seconds_per_photo"] = round((time.perf_counter() - t0) / max(1, len(rows)), 3)
    summary["model_versions"] = pipeline.model_versions
    return {"summary": summary, "rows": rows}


def summarize(rows: list[dict]) -> dict:
    def mean(key):
        v = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(v)), 4) if v else None

    scored = [r for r in rows if r.get("glaucoma") is not None and r.get("glaucoma_probability") is not None]
    labels = [r["glaucoma"] for r in scored]
    scores = [r["glaucoma_probability"] for r in scored]
    vcdr_err = [abs(r["vcdr"] - r["vcdr_expert"]) for r in rows if r.get("vcdr") is not None and r.get("vcdr_expert") is not None]
    readable = [r for r in rows if r["ok"]]
    a = auc(labels, scores)
    s = sensitivity_at_specificity(labels, scores, 0.9)
    return {
        "n": len(rows),
        "n_unreadable": len(rows) - len(readable),
        "disc_dice": mean("disc_dice"),
        "cup_dice": mean("cup_dice"),
        "vcdr_mae": round(float(np.mean(vcdr_err)), 4) if vcdr_err else None,
        "auc": None if a is None else round(a, 4),
        "sensitivity_at_90_specificity": None if s is None else round(s, 4),
        "ungradable_rate": round(sum(1 for r in readable if not r["gradable"]) / len(readable), 4) if readable else None,
        "n_glaucoma": int(sum(labels)), "n_scored": len(scored),
    }


def select(folder: Path, records: list[Record], split: str | None) -> list[Record]:
    """Keep one split: the project's own (train/val/test, by the folder's name in splits.csv) where the
    folder is one of ours, else the source's own split column."""
    if split is None:
        return records
    if split in ("train", "val", "test"):
        splits = load_splits()
        ours = [r for r in records if (folder.name, r.id) in splits]
        if ours:
            return [r for r in ours if splits[(folder.name, r.id)] == split]
    return [r for r in records if r.split == split]


def run(data: list[Path], pipeline: ScreeningPipeline, split: str | None = None, json_out: Path | None = None,
        progress: bool = True) -> dict:
    records: list[Record] = []
    for folder in data:
        records += select(Path(folder), read_dataset(folder), split)
    if not records:
        raise SystemExit(f"no photos to evaluate in {', '.join(map(str, data))}" + (f" (split {split})" if split else ""))
    report = evaluate_records(pipeline, records, progress=progress)
    report["summary"]["data"] = [str(d) for d in data]
    report["summary"]["split"] = split
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report
