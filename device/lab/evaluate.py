"""`glaucoscreen evaluate`: how good the screening is on a folder of annotated photos.

Runs the same pipeline the unit runs, photo by photo, and compares with the experts' masks and
labels. Dice is measured on the photo's own pixel grid; the glaucoma figures use every photo with a
label and a score; ungradable photos count in `ungradable_rate` and still get segmented, so a
strict quality gate does not hide a weak model.

A figure from a hundred photos is only an estimate, so each comes with a 95% percentile-bootstrap
interval: whole patients are resampled where the source names them (two eyes of one person are
not two independent cases), single photos elsewhere. All figures share the same seeded resamples,
so a rerun prints the same intervals. Every figure is also given per source, because a model that
is good on REFUGE's Canon photos can be poor on another camera and the pooled figure hides it.

Per source, too: the quality gate's false rejections (photos a person judged gradable, `Record.gradable`,
that the gate turned away: each is a patient asked to sit again for nothing, and a camera whose good
photos the gate rejects cannot be used), whether the disc was found, and the sensitivity and
specificity at the shipped referral threshold with the counts behind them. Photos without glaucoma
labels or masks (DRIVE, STARE) are still screened; a figure they cannot give is left out ("-"), not 0.
"""
from __future__ import annotations

import json
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from device.lab.roc import (
    auc,
    draw_roc,
    operating_point,
    roc_curve,
    sensitivity_at_specificity,
    weighted_auc,
    weighted_sensitivity_at_specificity,
)
from device.screening.pipeline import ScreeningPipeline, screen_file
from models.augment import Camera, camera_look, from_config
from models.datasets import Record, disc_geometry, read_dataset, vcdr_from_masks
from models.metrics import dice
from models.runtime.preprocess import INPUT_SIZE
from models.splits import load_splits

RESAMPLES = 2000
SEED = 20240601
LEVEL = 0.95
# Figures that are a mean over photos, and the row key each averages.
MEAN_FIGURES = {"disc_dice": "disc_dice", "cup_dice": "cup_dice", "vcdr_mae": "vcdr_error",
                "fovea_error_px": "fovea_error_px", "fovea_error_dd": "fovea_error_dd",
                "fovea_error_256": "fovea_error_256"}
NO_FOVEA = "no fovea labels"
NO_GLAUCOMA = "no glaucoma labels"


def evaluate_records(pipeline: ScreeningPipeline, records: list[Record], progress: bool = False,
                     resamples: int = RESAMPLES, seed: int = SEED, camera: SimulatedCamera | None = None) -> dict:
    rows = []
    t0 = time.perf_counter()
    for i, rec in enumerate(records):
        rows.append(evaluate_photo(pipeline, rec, camera))
        if progress:
            print(f"\r{i + 1}/{len(records)}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    seconds = (time.perf_counter() - t0) / max(1, len(rows))
    summary = summarize(rows, resamples=resamples, seed=seed, threshold=pipeline.policy.refer_threshold)
    summary["seconds_per_photo"] = round(seconds, 3)
    summary["model_versions"] = pipeline.model_versions
    if camera is not None:
        summary["simulated_camera"] = {"config": camera.config, "seed": camera.seed}
    return {"summary": summary, "rows": rows}


def evaluate_photo(pipeline: ScreeningPipeline, rec: Record, camera: SimulatedCamera | None = None) -> dict:
    """One photo screened and compared with what the experts said of it (seen through `camera` if given)."""
    row, photo, result = screen_file(pipeline, rec.image_path, look=None if camera is None else camera.look_for(rec.id))
    out = {
        "id": rec.id, "source": rec.source, "patient": rec.patient, "ok": row["ok"], "error": row.get("error"),
        "gradable": row.get("gradable"), "referral": row.get("referral"),
        "glaucoma": rec.glaucoma, "glaucoma_probability": row.get("glaucoma_probability"),
        "vcdr": row.get("vcdr"), "vcdr_expert": rec.vcdr,
        "quality_reasons": [r["code"] for r in (row.get("quality") or {}).get("reasons", [])],
        "known_gradable": rec.gradable, "gate_passed": (row.get("quality") or {}).get("gradable"),
        "disc_found": None,
    }
    if result is None:
        return out
    out["disc_found"] = result.measurements is not None  # located and outlined: what a referral needs
    assert photo is not None  # screen_file returns the photo with every result
    rgb = photo.rgb
    disc_gt = None
    if rec.has_mask:
        disc_gt, cup_gt = rec.load_mask(rgb.shape)
        if disc_gt.shape != rgb.shape[:2]:
            raise ValueError(f"{rec.source} {rec.id}: mask is {disc_gt.shape[1]}x{disc_gt.shape[0]} but the photo "
                             f"is {rgb.shape[1]}x{rgb.shape[0]}")
        if result.segmentation is not None:
            disc, cup = result.segmentation.masks_on_photo(rgb.shape)
        else:
            disc = cup = np.zeros(disc_gt.shape, bool)
        if disc_gt.any():
            out["disc_dice"] = dice(disc, disc_gt)
        # an empty expert cup means nobody outlined it (G1020 leaves some out), not a cup of size zero
        if disc_gt.any() and cup_gt.any():
            out["cup_dice"] = dice(cup, cup_gt)
            if out["vcdr_expert"] is None:
                out["vcdr_expert"] = vcdr_from_masks(disc_gt, cup_gt)
    if out["vcdr"] is not None and out["vcdr_expert"] is not None:
        out["vcdr_error"] = abs(out["vcdr"] - out["vcdr_expert"])
    if rec.fovea is not None:
        out["fovea_expert"] = [round(float(v), 1) for v in rec.fovea]
        out["fovea"] = None if result.fovea is None else [round(float(v), 1) for v in result.fovea]
        if result.fovea is not None:
            err = float(np.hypot(result.fovea[0] - rec.fovea[0], result.fovea[1] - rec.fovea[1]))
            out["fovea_error_px"] = err
            out["fovea_error_256"] = err * INPUT_SIZE / max(rgb.shape[:2])  # MTL-IO's unit: the 256-px input
            if disc_gt is not None and disc_gt.any():
                out["fovea_error_dd"] = err / disc_geometry(disc_gt)[2]
    return out


# ---------------------------------------------------------------- figures with intervals

@dataclass(frozen=True)
class SimulatedCamera:
    """Labelled photos shown as another camera would have taken them (`models.augment.camera_look`).

    No third camera in our data has glaucoma labels, so this is the one way to see here how the
    operating point moves off-camera. The figures it gives are of a simulation, named as such in the
    report, never of a real camera. Each photo gets its own draw, seeded by (seed, photo id), so a
    rerun, or the same photo in another subset, looks the same."""

    camera: Camera
    seed: int
    config: str

    @classmethod
    def from_file(cls, path: Path, seed: int) -> "SimulatedCamera":
        config = json.loads(Path(path).read_text())
        if not isinstance(config, dict) or "camera" not in config:
            raise SystemExit(f"{path} has no \"camera\" section (see models/configs/*_cameras.json)")
        return cls(from_config(Camera(), config["camera"], f"{path}: camera"), seed, Path(path).name)

    def look_for(self, photo_id: str) -> Callable[[np.ndarray], np.ndarray]:
        rng = np.random.default_rng([self.seed, zlib.crc32(photo_id.encode())])
        return lambda rgb: camera_look(rng, rgb, self.camera)


def resample_weights(units: list[str], resamples: int, seed: int) -> np.ndarray:
    """resamples x photos: how often each photo is drawn when whole units (patients or photos) are resampled."""
    keys, unit_of = np.unique(np.asarray(units, dtype=str), return_inverse=True)
    n_units = len(keys)
    if n_units == 0 or resamples <= 0:
        return np.zeros((max(0, resamples), len(units)))
    draws = np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))
    flat = (np.arange(resamples)[:, None] * n_units + draws).ravel()
    counts = np.bincount(flat, minlength=resamples * n_units).reshape(resamples, n_units)
    return counts[:, unit_of].astype(float)


def _interval(values: np.ndarray, point) -> list[float] | None:
    """Percentile interval of the resampled figure; None if the figure itself or most resamples are undefined."""
    if point is None or values.size == 0:
        return None
    finite = values[np.isfinite(values)]
    if finite.size < 0.5 * values.size:
        return None
    lo, hi = np.percentile(finite, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return [round(float(lo), 4), round(float(hi), 4)]


def auc_interval(units: list[str], labels, scores, resamples: int = RESAMPLES, seed: int = SEED) -> list[float] | None:
    """95% percentile interval of the AUC, resampling whole units (patients: both eyes go together)."""
    point = auc(labels, scores)
    return _interval(weighted_auc(labels, scores, resample_weights(units, resamples, seed)), point)


def _unit(row: dict) -> str:
    return f"{row['source']}/patient/{row['patient']}" if row.get("patient") else f"{row['source']}/photo/{row['id']}"


def figures(rows: list[dict], resamples: int = RESAMPLES, seed: int = SEED, threshold: float | None = None) -> dict:
    """The figures of one group of photos, each with its bootstrap interval under `ci`."""
    def mean(key):
        v = [r[key] for r in rows if r.get(key) is not None]
        return round(float(np.mean(v)), 4) if v else None

    scored = [r for r in rows if r.get("glaucoma") is not None and r.get("glaucoma_probability") is not None]
    labels = np.array([r["glaucoma"] for r in scored], bool)
    scores = np.array([r["glaucoma_probability"] for r in scored], float)
    readable = [r for r in rows if r["ok"]]
    a = auc(labels, scores)
    s = sensitivity_at_specificity(labels, scores, 0.9)
    out = {
        "n": len(rows),
        "n_unreadable": len(rows) - len(readable),
        **{name: mean(key) for name, key in MEAN_FIGURES.items() if not name.startswith("fovea")},
        "auc": None if a is None else round(a, 4),
        "sensitivity_at_90_specificity": None if s is None else round(s, 4),
        "ungradable_rate": round(sum(1 for r in readable if not r["gradable"]) / len(readable), 4) if readable else None,
        "n_glaucoma": int(labels.sum()), "n_scored": len(scored),
    }
    with_fovea = [r for r in rows if r.get("fovea_expert") is not None]
    out["n_fovea"] = len(with_fovea)
    if with_fovea:
        out.update({name: mean(key) for name, key in MEAN_FIGURES.items() if name.startswith("fovea")})
        out["n_fovea_missed"] = sum(1 for r in with_fovea if r.get("fovea_error_px") is None)
    else:
        out["fovea"] = NO_FOVEA
    if not any(r.get("glaucoma") is not None for r in rows):
        out["glaucoma"] = NO_GLAUCOMA
        if threshold is not None:
            out.update(referred_without_labels(rows, threshold))
    elif threshold is not None and len(scored):
        out.update(referral_operating_point(labels, scores, threshold))
    out.update(gate_rejections(rows))
    out.update(disc_finding(rows))

    weights = resample_weights([_unit(r) for r in rows], resamples, seed)
    ci = {}
    for name, key in MEAN_FIGURES.items():
        if name not in out:
            continue
        has = np.array([r.get(key) is not None for r in rows])
        v = np.array([r[key] if r.get(key) is not None else 0.0 for r in rows], float)
        w = weights * has
        total = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ci[name] = _interval(np.where(total > 0, (w @ v) / np.where(total > 0, total, 1), np.nan), out[name])
    index = {id(r): i for i, r in enumerate(rows)}
    w_scored = weights[:, [index[id(r)] for r in scored]]
    ci["auc"] = _interval(weighted_auc(labels, scores, w_scored), out["auc"]) if scored else None
    ci["sensitivity_at_90_specificity"] = (
        _interval(weighted_sensitivity_at_specificity(labels, scores, w_scored, 0.9), out["sensitivity_at_90_specificity"])
        if scored else None)
    out["ci"] = ci
    patients = sum(1 for r in rows if r.get("patient"))
    out["bootstrap"] = {
        "resamples": resamples, "seed": seed, "level": LEVEL, "method": "percentile",
        "unit": "patient" if patients == len(rows) and rows else "photo" if patients == 0 else "patient where known, else photo",
        "n_units": len({_unit(r) for r in rows}),
    }
    return out


def referral_operating_point(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of the threshold the unit ships, with the counts behind them: on a
    small source "1.00" can be 3 of 3, which says little."""
    sens, spec = operating_point(labels, scores, threshold)
    return {
        "referral_threshold": round(float(threshold), 4),
        "sensitivity_at_referral_threshold": None if sens is None else round(sens, 4),
        "specificity_at_referral_threshold": None if spec is None else round(spec, 4),
        "n_glaucoma_referred": int((scores[labels] >= threshold).sum()),
        "n_normal": int((~labels).sum()),
        "n_normal_not_referred": int((scores[~labels] < threshold).sum()),
    }


def referred_without_labels(rows: list[dict], threshold: float) -> dict:
    """The share of a camera's gradable photos the unit would refer. Without labels it is neither a
    sensitivity nor a specificity, but on a population where glaucoma is rare (DRIVE's diabetic
    screening) most of it is false referrals: it shows an operating point moving with the camera."""
    screened = [r["glaucoma_probability"] for r in rows if r.get("gradable") and r.get("glaucoma_probability") is not None]
    return {"referral_threshold": round(float(threshold), 4), "n_screened": len(screened),
            "n_referred": sum(1 for p in screened if p >= threshold)}


def gate_rejections(rows: list[dict]) -> dict:
    """False rejections: readable photos known to be gradable that the quality gate turned away, and
    the gate's first reason for each, so a camera's systematic trouble (its colour, its field) shows."""
    known = [r for r in rows if r["ok"] and r.get("known_gradable") == 1]
    rejected = [r for r in known if r.get("gate_passed") is False]
    reasons = Counter((r.get("quality_reasons") or ["no reason given"])[0] for r in rejected)
    return {
        "n_known_gradable": len(known),
        "n_rejected_known_gradable": len(rejected),
        "false_rejection_rate": round(len(rejected) / len(known), 4) if known else None,
        "first_rejection_reasons": dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0]))),
    }


def disc_finding(rows: list[dict]) -> dict:
    """On how many readable photos the disc was located and outlined: the one check of the disc step
    that needs no expert mask, so it covers cameras whose photos come without one."""
    tried = [r for r in rows if r["ok"] and r.get("disc_found") is not None]
    found = sum(1 for r in tried if r["disc_found"])
    return {"n_disc_tried": len(tried), "n_disc_found": found,
            "disc_found_rate": round(found / len(tried), 4) if tried else None}


def measured_on(rows: list[dict]) -> dict[str, int]:
    """Photos per source, for the report's header: a figure means little without what it was measured on."""
    return dict(sorted(Counter(r["source"] for r in rows).items()))


def summarize(rows: list[dict], resamples: int = RESAMPLES, seed: int = SEED, threshold: float | None = None) -> dict:
    """All photos together, then each source on its own (under `by_source`); `measured_on` heads it."""
    summary = figures(rows, resamples, seed, threshold)
    sources = sorted({r["source"] for r in rows})
    if len(sources) == 1:  # the source is all the photos: the same figures, not a second bootstrap
        summary["by_source"] = {sources[0]: dict(summary)}
    else:
        summary["by_source"] = {src: figures([r for r in rows if r["source"] == src], resamples, seed, threshold)
                                for src in sources}
    return {"measured_on": measured_on(rows), **summary}


# ---------------------------------------------------------------- reports

def _cell(fig: dict, key: str, digits: int = 3) -> str:
    v = fig.get(key)
    if v is None:
        return "-"
    ci = (fig.get("ci") or {}).get(key)
    return f"{v:.{digits}f} ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if ci else f"{v:.{digits}f}"


def markdown(summary: dict) -> str:
    """The figures as Markdown tables, one row per source plus all photos, 95% intervals in brackets:
    what the photos were, then the accuracy table, then the gate and referral-threshold table."""
    groups = [("all photos", summary)]
    if len(summary.get("by_source", {})) > 1:
        groups += list(summary["by_source"].items())
    elif summary.get("by_source"):
        groups = [(f"all photos ({next(iter(summary['by_source']))})", summary)]
    return (measured_on_line(summary) + "\n\n" + accuracy_table(summary, groups) + "\n\n"
            + gate_and_threshold_table(groups) + "\n\n" + "\n".join(notes(summary)) + "\n")


def measured_on_line(summary: dict) -> str:
    """The header: which sources, how many photos each, so no figure is read as coming from elsewhere."""
    sources = summary.get("measured_on") or {}
    listed = ", ".join(f"{src} (n={n})" for src, n in sources.items())
    line = f"Measured on {summary['n']} photos from {len(sources)} source{'s' * (len(sources) != 1)}: {listed}."
    simulated = summary.get("simulated_camera")
    if simulated:
        line += (f" **Simulated camera**: every photo was first changed by the camera model of {simulated['config']}"
                 f" (seed {simulated['seed']}); these figures are of that simulation, not of a real camera.")
    return line


def accuracy_table(summary: dict, groups: list[tuple[str, dict]]) -> str:
    """Segmentation and glaucoma figures against the experts, "-" where a source has nothing to compare with."""
    fovea = summary.get("n_fovea", 0) > 0
    head = ["source", "photos", "glaucoma", "disc Dice", "cup Dice", "vCDR MAE", "AUC", "sens. @ 90% spec.",
            "ungradable"]
    if fovea:
        head += ["fovea error px", "fovea error (disc diam.)", "fovea error (256 px)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, fig in groups:
        glaucoma = "-" if fig.get("glaucoma") == NO_GLAUCOMA else f"{fig['n_glaucoma']} of {fig['n_scored']}"
        cells = [name, str(fig["n"]), glaucoma, _cell(fig, "disc_dice"),
                 _cell(fig, "cup_dice"), _cell(fig, "vcdr_mae"), _cell(fig, "auc"),
                 _cell(fig, "sensitivity_at_90_specificity"),
                 "-" if fig["ungradable_rate"] is None else f"{fig['ungradable_rate']:.1%}"]
        if fovea:
            cells += ([_cell(fig, "fovea_error_px", 1), _cell(fig, "fovea_error_dd", 3), _cell(fig, "fovea_error_256", 2)]
                      if fig.get("n_fovea") else [NO_FOVEA, "-", "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gate_and_threshold_table(groups: list[tuple[str, dict]]) -> str:
    """False rejections, disc finding and the referral operating point, each with its counts."""
    head = ["source", "photos", "known gradable rejected by the gate", "first reasons", "disc found",
            "sensitivity at referral threshold", "specificity at referral threshold"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, fig in groups:
        cells = [name, str(fig["n"]), _rejected_cell(fig), _reasons_cell(fig),
                 _share(fig.get("n_disc_found"), fig.get("n_disc_tried")),
                 *_operating_point_cells(fig)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(part: int | None, whole: int | None) -> str:
    return f"{part}/{whole} ({part / whole:.1%})" if part is not None and whole else "-"


def _rejected_cell(fig: dict) -> str:
    return _share(fig.get("n_rejected_known_gradable"), fig.get("n_known_gradable"))


def _reasons_cell(fig: dict) -> str:
    if not fig.get("n_known_gradable"):
        return "-"
    reasons = fig.get("first_rejection_reasons") or {}
    return ", ".join(f"{code} {count}" for code, count in reasons.items()) or "none"


def _operating_point_cells(fig: dict) -> list[str]:
    if fig.get("glaucoma") == NO_GLAUCOMA:
        referred = _share(fig.get("n_referred"), fig.get("n_screened"))
        return [NO_GLAUCOMA, NO_GLAUCOMA if referred == "-" else f"no labels; referred {referred}"]
    sens, spec = fig.get("sensitivity_at_referral_threshold"), fig.get("specificity_at_referral_threshold")
    return ["-" if sens is None else f"{sens:.3f} ({fig['n_glaucoma_referred']}/{fig['n_glaucoma']})",
            "-" if spec is None else f"{spec:.3f} ({fig['n_normal_not_referred']}/{fig['n_normal']})"]


def notes(summary: dict) -> list[str]:
    """What the tables do not say: how the intervals were drawn, what is missing, the threshold."""
    fovea = summary.get("n_fovea", 0) > 0
    b = summary["bootstrap"]
    said = [f"95% intervals: percentile bootstrap, {b['resamples']} resamples (seed {b['seed']}), "
             f"resampling by {b['unit']} ({b['n_units']} units)."]
    if not fovea:
        said.append(f"Fovea: {NO_FOVEA} in these photos.")
    elif summary.get("n_fovea_missed"):
        said.append(f"Fovea: not found on {summary['n_fovea_missed']} of {summary['n_fovea']} photos with a fovea label "
                     f"(left out of the fovea error).")
    if summary.get("referral_threshold") is not None:
        said.append(f"At the referral threshold {summary['referral_threshold']:.3f}: sensitivity "
                     f"{_fmt(summary.get('sensitivity_at_referral_threshold'))}, specificity "
                     f"{_fmt(summary.get('specificity_at_referral_threshold'))} (a photo scoring at or above "
                     f"it is referred; counts in the table).")
    said.append("Known gradable: judged gradable by a person (labels.csv `gradable`, or a folder of curated "
                 "research photos); disc found: located and outlined, of the readable photos.")
    if summary.get("split"):
        said.append(f"Split: {summary['split']}.")
    return said


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def roc_figure(rows: list[dict], summary: dict, path: Path) -> np.ndarray | None:
    """The ROC figure of all photos (and of each source when there are several); None without both classes."""
    def scored(rs):
        rs = [r for r in rs if r.get("glaucoma") is not None and r.get("glaucoma_probability") is not None]
        return np.array([r["glaucoma"] for r in rs], bool), np.array([r["glaucoma_probability"] for r in rs], float)

    def legend(name, fig):
        ci = fig["ci"].get("auc")
        band = f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
        return f"{name}: AUC {fig['auc']:.3f}{band}, n={fig['n_scored']} ({fig['n_glaucoma']} glaucoma)"

    y, s = scored(rows)
    if summary.get("auc") is None:
        return None
    fpr, tpr, _ = roc_curve(y, s)
    curves = [{"fpr": fpr, "tpr": tpr, "label": legend("all photos", summary)}]
    if len(summary["by_source"]) > 1:
        for src, fig in summary["by_source"].items():
            if fig.get("auc") is None:
                continue
            ys, ss = scored([r for r in rows if r["source"] == src])
            f, t, _ = roc_curve(ys, ss)
            curves.append({"fpr": f, "tpr": t, "label": legend(src, fig)})
    point = None
    if summary.get("referral_threshold") is not None:
        sens, spec = summary["sensitivity_at_referral_threshold"], summary["specificity_at_referral_threshold"]
        point = {"fpr": 1 - spec, "tpr": sens,
                 "label": f"referral threshold {summary['referral_threshold']:.3f}\n"
                          f"sensitivity {sens:.2f}, specificity {spec:.2f}"}
    versions = summary.get("model_versions") or {}
    subtitle = ", ".join(x for x in (
        f"split {summary['split']}" if summary.get("split") else "",
        f"model {versions['segmentation']}" if versions.get("segmentation") else "",
        f"AUC 95% interval: bootstrap, {summary['bootstrap']['resamples']} resamples") if x)
    return draw_roc(path, curves, point, title="Glaucoma probability: ROC curve", subtitle=subtitle)


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
        progress: bool = True, resamples: int = RESAMPLES, seed: int = SEED, roc_png: Path | None = None,
        camera: SimulatedCamera | None = None) -> dict:
    records: list[Record] = []
    for folder in data:
        records += select(Path(folder), read_dataset(folder), split)
    if not records:
        raise SystemExit(f"no photos to evaluate in {', '.join(map(str, data))}" + (f" (split {split})" if split else ""))
    report = evaluate_records(pipeline, records, progress=progress, resamples=resamples, seed=seed, camera=camera)
    report["summary"]["data"] = [str(d) for d in data]
    report["summary"]["split"] = split
    if roc_png:
        drawn = roc_figure(report["rows"], report["summary"], Path(roc_png))
        report["summary"]["roc_png"] = str(roc_png) if drawn is not None else None
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=1) + "\n")
    return report
