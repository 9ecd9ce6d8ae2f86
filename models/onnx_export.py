"""Export a trained checkpoint to the ONNX file the unit runs, and record it in the manifest.

    python -m models.onnx_export --checkpoint runs/segmentation/best.pt --out models/artifacts/segmentation.onnx
    python -m models.onnx_export --checkpoint runs/classifier/best.pt --out models/artifacts/glaucoma.onnx --name glaucoma
    python -m models.onnx_export --checkpoint runs/progression/best.pt --out models/artifacts/progression.onnx --name progression

The export is only accepted when ONNX Runtime reproduces torch's outputs on the same input (within
1e-4): the unit never runs torch, so an operator that exports differently would otherwise go
unnoticed until a patient's disc was drawn wrong. The manifest entry ties the file's sha256 to its
version, training summary and validation metrics, which the visit's report carries along.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.net import HEADS, parameter_count
from models.runtime.preprocess import INPUT_SIZE

OPSET = 17
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Spec:
    """What the unit feeds an engine and reads back: names, shapes (N = batch) and meaning."""

    inputs: dict[str, tuple]
    outputs: dict[str, str]
    version_base: str
    preprocess: str


PHOTO = "models.runtime.preprocess.to_input (ImageNet mean/std, RGB)"
SPECS = {
    "segmentation": Spec({"image": ("N", 3, INPUT_SIZE, INPUT_SIZE)},
                         {"disc": "N x 1 x 256 x 256 probability", "cup": "N x 1 x 256 x 256 probability",
                          "fovea": "N x 1 x 256 x 256 heatmap (sigma 7 px)", "glaucoma": "N x 1 logit"},
                         "seg-0.1.0", PHOTO),
    "disc_classifier": Spec({"image": ("N", 3, INPUT_SIZE, INPUT_SIZE)}, {"glaucoma": "N x 1 logit"},
                            "glaucoma-0.1.0", PHOTO + ", the pass-2 disc crop"),
    "progression": Spec({"earlier": ("N", 3, 160, 160), "current": ("N", 3, 160, 160), "years": ("N", 1)},
                        {"progression": "N x 1 logit"}, "progression-0.1.0",
                        "device.screening.progression.crop_input on the disc crops of two visits; years between them"),
}
assert tuple(SPECS["segmentation"].outputs) == (*HEADS, "glaucoma")


class _Outputs(torch.nn.Module):
    """The network with its outputs flattened into the named ONNX outputs, in a fixed order."""

    def __init__(self, net: torch.nn.Module, spec: Spec):
        super().__init__()
        self.net, self.names = net, list(spec.outputs)

    def forward(self, *inputs: torch.Tensor):
        out = self.net(*inputs)
        if isinstance(out, torch.Tensor):
            return (out,)
        return tuple(out[name] for name in self.names)


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    """Any of our checkpoints (training's best.pt, or a slimmed half-precision copy) as a float32 network."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    network = state["config"].get("network", "segmentation")
    if network == "progression":
        from models.progression_net import ProgressionNet

        net: torch.nn.Module = ProgressionNet(dropout=float(state["config"].get("dropout", 0.5)),
                                              change_features=len(state["config"].get("change_features") or []))
    else:
        from models.train import build_network

        net = build_network(state["config"], pretrained=False)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    return net.eval(), state


def network_of(state: dict) -> str:
    return state["config"].get("network", "segmentation")


REGISTERED = ("the earlier visit's photo registered onto today's (device.screening.registration) and both cut through "
              "today's disc crop at 160 px, as device.screening.progression.crop_input frames it; years between them")


def spec_of(state: dict) -> Spec:
    """What this checkpoint's network takes: a progression network trained on registered pairs takes them, and
    its noise-aware change measures (`change_features`, in that order) beside the years."""
    spec = SPECS[network_of(state)]
    config = state["config"]
    if network_of(state) != "progression" or config.get("inputs") != "registered":
        return spec
    names = list(config.get("change_features") or [])
    inputs = {**spec.inputs, **({"change": ("N", len(names))} if names else {})}
    said = REGISTERED + (f"; change: {', '.join(names)} (device.screening.progression.features)" if names else "")
    return Spec(inputs, spec.outputs, spec.version_base, said)


def export_onnx(net: torch.nn.Module, out: Path, spec: Spec = SPECS["segmentation"]) -> float:
    """Write the ONNX file and return the largest |ORT - torch| difference on a test batch."""
    import onnxruntime as ort

    net = net.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to takes memory_format at runtime; torch's overloads omit it
    wrapped = _Outputs(net, spec).eval()
    g = torch.Generator().manual_seed(0)
    example = tuple(torch.rand(2, *shape[1:], generator=g) if name == "years" else
                    torch.randn(2, *shape[1:], generator=g) for name, shape in spec.inputs.items())
    names = list(spec.outputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and gives plain opset-17 graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, example, str(out), opset_version=OPSET, input_names=list(spec.inputs),
                          output_names=names, dynamo=False,
                          dynamic_axes={**{n: {0: "N"} for n in spec.inputs}, **{n: {0: "N"} for n in names}})
    with torch.no_grad():
        expected = [t.numpy() for t in wrapped(*example)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(names, {n: t.numpy() for n, t in zip(spec.inputs, example)})
    error = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
    if error > TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from torch by {error:.2e} (> {TOLERANCE}); the export is refused")
    return error


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def best_entry(log: list[dict]) -> dict:
    """The logged epoch the checkpoint was kept for (training's `score`, the progression run's val AUC)."""
    def score(e):
        return e.get("val", {}).get("score") if "val" in e else e.get("val_auc")

    scored = [e for e in log if score(e) is not None]
    return max(scored, key=score) if scored else (log[-1] if log else {})


def manifest_entry(onnx_path: Path, manifest_path: Path, net: torch.nn.Module, state: dict, error: float) -> dict:
    digest = sha256(onnx_path)
    config = state["config"]
    spec = spec_of(state)
    log = state.get("log", [])
    chosen = log[-1] if config.get("keep") == "last" and log else best_entry(log)  # a run that keeps its last epoch
    training = {
        "name": config.get("name"), "mode": config.get("mode"), "seed": config.get("seed"),
        "epochs": config.get("epochs"), "best_epoch": chosen.get("epoch"), "batch_size": config.get("batch_size"),
        "lr": config.get("lr"), "pretrained_encoder": "EfficientNet-Lite0 ImageNet" if config.get("pretrained") else None,
    }
    if "sources" in config:
        training["sources"] = [{k: s[k] for k in ("folder", "splits", "weight") if k in s} for s in config["sources"]]
        training["synthetic_photos"] = config.get("synthetic", {}).get("count", 0)
    else:
        training["sources"] = [{"folder": config.get("grape_folder", "grape"), "splits": ["train"], "by": "patient",
                                **({"pairs": "registered"} if config.get("inputs") == "registered" else {})}]
        training["synthetic_eyes"] = config.get("synthetic_eyes", 0)
        if config.get("change_features"):
            training["change_features"] = list(config["change_features"])
    return {
        "file": onnx_path.resolve().relative_to(manifest_path.parent.resolve()).as_posix(),
        "sha256": digest,
        "version": f"{spec.version_base}+{digest[:8]}",
        "parameters": parameter_count(net),
        "input_size": spec.inputs[next(iter(spec.inputs))][-1],
        "inputs": {name: {"dtype": "float32", "shape": list(shape), "preprocess": spec.preprocess}
                   for name, shape in spec.inputs.items()},
        "outputs": dict(spec.outputs),
        "opset": OPSET,
        "onnxruntime_max_abs_error": error,
        "training": training,
        "val_metrics": chosen.get("val", {"auc": chosen.get("val_auc")}),
    }


def update_manifest(manifest_path: Path, name: str, entry: dict) -> None:
    """Replace one model's entry and keep the other models'; extra keys of this model's old entry (its INT8
    build, say) are kept only while the FP32 file is unchanged, since they were made from it."""
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    previous = manifest.get(name, {})
    keep = {k: v for k, v in previous.items() if k not in entry and previous.get("sha256") == entry["sha256"]}
    manifest[name] = {**entry, **keep}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a checkpoint (segmentation, disc classifier or progression) to ONNX.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--manifest", type=Path, help="manifest to update (default: manifest.json beside --out)")
    parser.add_argument("--name", default="segmentation", help="the model's name in the manifest")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    net, state = load_checkpoint(args.checkpoint)
    error = export_onnx(net, args.out, spec_of(state))
    manifest_path = args.manifest or args.out.parent / "manifest.json"
    entry = manifest_entry(args.out, manifest_path, net, state, error)
    update_manifest(manifest_path, args.name, entry)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {entry['parameters']} parameters, "
          f"version {entry['version']}, max |ORT - torch| {error:.1e}")


if __name__ == "__main__":
    main()
