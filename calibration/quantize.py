"""Make the INT8 build of a shipped model from its FP32 ONNX and the calibration set.

    python -m calibration.quantize --data ../shared/data/refuge-val --data ../shared/data/drishti-gs1

writes `models/artifacts/<name>.int8.onnx` and records it (hash, calibration recipe, what stayed in
float) under the model's `int8` entry in the manifest. Whether the unit may use it is decided
afterwards by the accuracy gate (`glaucoscreen gate`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration import calibration_set
from calibration.int8 import check_tensorrt_compatible, quantize
from models.runtime import registry


def quantize_model(name: str, data: list[Path], method: str = "minmax", artifacts: Path = registry.ARTIFACTS) -> dict:
    fp32, entry = registry.model_file(name, "fp32", artifacts)
    out = artifacts / f"{name}.int8.onnx"
    tensors = list(calibration_set.batches(data))
    info = quantize(fp32, out, tensors, method=method)
    problems = check_tensorrt_compatible(out)
    if problems:
        raise RuntimeError(f"the INT8 model would be rejected by TensorRT: {'; '.join(problems)}")
    sha = registry.sha256_file(out)
    manifest = registry.manifest(artifacts)
    manifest[name]["int8"] = {
        "file": out.name, "sha256": sha, "version": f"{entry.get('version', name)}-int8+{sha[:8]}",
        "calibration": {"recipe": "calibration/calibration_set.csv + synthetic", "inputs": len(tensors),
                        "fp32_sha256": entry["sha256"], **info},
    }
    (artifacts / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest[name]["int8"] | {"bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="quantize a shipped model to INT8 QDQ")
    p.add_argument("--data", action="append", required=True, type=Path)
    p.add_argument("--model", default="segmentation")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    args = p.parse_args(argv)
    print(json.dumps(quantize_model(args.model, args.data, args.method), indent=1))


if __name__ == "__main__":
    main()
