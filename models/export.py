"""Export a trained checkpoint to the ONNX file the unit runs, and record it in the manifest.

    python -m models.export --checkpoint runs/foundation/best.pt --out models/artifacts/segmentation.onnx

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
from pathlib import Path

import numpy as np
import torch

from models.net import HEADS, build_net, parameter_count
from models.preprocess import INPUT_SIZE

OUTPUTS = (*HEADS, "glaucoma")
OPSET = 17
TOLERANCE = 1e-4
VERSION_BASE = "seg-0.1.0"


class _Outputs(torch.nn.Module):
    """The network with its dict flattened into the named ONNX outputs, in a fixed order."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor):
        out = self.net(image)
        return tuple(out[name] for name in OUTPUTS)


def load_checkpoint(path: Path) -> tuple[torch.nn.Module, dict]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    net = build_net(pretrained=False, dropout=float(state["config"].get("dropout", 0.5)))
    net.load_state_dict(state["model"])
    return net.eval(), state


def export_onnx(net: torch.nn.Module, out: Path, size: int = INPUT_SIZE) -> float:
    """Write the ONNX file and return the largest |ORT - torch| difference on a test batch."""
    import onnxruntime as ort

    net = net.eval().to(memory_format=torch.contiguous_format)
    wrapped = _Outputs(net).eval()
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but needs no onnxscript and gives plain opset-17 graphs.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapped, (example,), str(out), opset_version=OPSET, input_names=["image"],
                          output_names=list(OUTPUTS), dynamo=False,
                          dynamic_axes={"image": {0: "N"}, **{name: {0: "N"} for name in OUTPUTS}})
    with torch.no_grad():
        expected = [t.numpy() for t in wrapped(example)]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUTS), {"image": example.numpy()})
    error = max(float(np.abs(a - b).max()) for a, b in zip(got, expected))
    if error > TOLERANCE:
        raise RuntimeError(f"ONNX Runtime differs from torch by {error:.2e} (> {TOLERANCE}); the export is refused")
    return error


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def best_entry(log: list[dict]) -> dict:
    scored = [e for e in log if e.get("val", {}).get("score") is not None]
    return max(scored, key=lambda e: e["val"]["score"]) if scored else (log[-1] if log else {})


def manifest_entry(onnx_path: Path, manifest_path: Path, net: torch.nn.Module, state: dict, error: float) -> dict:
    digest = sha256(onnx_path)
    config = state["config"]
    chosen = best_entry(state.get("log", []))
    return {
        "file": onnx_path.resolve().relative_to(manifest_path.parent.resolve()).as_posix(),
        "sha256": digest,
        "version": f"{VERSION_BASE}+{digest[:8]}",
        "parameters": parameter_count(net),
        "input_size": INPUT_SIZE,
        "inputs": {"image": {"dtype": "float32", "shape": ["N", 3, INPUT_SIZE, INPUT_SIZE],
                             "preprocess": "models.preprocess.to_input (ImageNet mean/std, RGB)"}},
        "outputs": {"disc": "N x 1 x 256 x 256 probability", "cup": "N x 1 x 256 x 256 probability",
                    "fovea": "N x 1 x 256 x 256 heatmap (sigma 7 px)", "glaucoma": "N x 1 logit"},
        "opset": OPSET,
        "onnxruntime_max_abs_error": error,
        "training": {
            "name": config.get("name"), "mode": config.get("mode"), "seed": config.get("seed"),
            "epochs": config.get("epochs"), "best_epoch": chosen.get("epoch"), "batch_size": config.get("batch_size"),
            "lr": config.get("lr"), "pretrained_encoder": "EfficientNet-Lite0 ImageNet" if config.get("pretrained") else None,
            "sources": [{k: s[k] for k in ("folder", "splits", "weight") if k in s} for s in config.get("sources", [])],
            "synthetic_photos": config.get("synthetic", {}).get("count", 0),
        },
        "val_metrics": chosen.get("val", {}),
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
    parser = argparse.ArgumentParser(description="Export a segmentation checkpoint to ONNX.")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--manifest", type=Path, help="manifest to update (default: manifest.json beside --out)")
    parser.add_argument("--name", default="segmentation", help="the model's name in the manifest")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        parser.error(f"checkpoint not found: {args.checkpoint}")
    net, state = load_checkpoint(args.checkpoint)
    error = export_onnx(net, args.out)
    manifest_path = args.manifest or args.out.parent / "manifest.json"
    entry = manifest_entry(args.out, manifest_path, net, state, error)
    update_manifest(manifest_path, args.name, entry)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, {entry['parameters']} parameters, "
          f"version {entry['version']}, max |ORT - torch| {error:.1e}")


if __name__ == "__main__":
    main()
