"""Make the INT8 build of a shipped model from its FP32 ONNX and the calibration set.

    python -m calibration.quantize --data ../shared/data/refuge-val --data ../shared/data/drishti-gs1

writes `models/artifacts/<name>.int8.onnx` and records it (hash, calibration recipe, what stayed in
float) under the model's `int8` entry in the manifest; with `--target cpu`, ONNX Runtime's build
`<name>.int8-cpu.onnx` under `int8_cpu` (calibration/int8.py says why there are two). Whether the
unit may use INT8 is decided afterwards by the accuracy gate (`glaucoscreen gate`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from calibration import calibration_set
from calibration.int8 import check_tensorrt_compatible, quantize
from models.runtime import registry

# target -> (file suffix, manifest key): the build both runtimes accept, and ONNX Runtime's faster one
BUILDS = {"tensorrt": (".int8.onnx", "int8"), "cpu": (".int8-cpu.onnx", "int8_cpu")}


def quantize_model(name: str, data: list[Path], method: str = "minmax", artifacts: Path = registry.ARTIFACTS,
                   target: str = "tensorrt") -> dict:
    fp32, entry = registry.model_file(name, "fp32", artifacts)
    suffix, key = BUILDS[target]
    out = artifacts / f"{name}{suffix}"
    tensors = list(calibration_set.batches(data))
    info = quantize(fp32, out, tensors, method=method, target=target)
    if target == "tensorrt":
        problems = check_tensorrt_compatible(out)
        if problems:
            raise RuntimeError(f"the INT8 model would be rejected by TensorRT: {'; '.join(problems)}")
    sha = registry.sha256_file(out)
    manifest = registry.manifest(artifacts)
    manifest[name][key] = {
        "file": out.name, "sha256": sha, "version": f"{entry.get('version', name)}-{key.replace('_', '-')}+{sha[:8]}",
        "calibration": {"recipe": "calibration/calibration_set.csv + synthetic", "inputs": len(tensors),
                        "fp32_sha256": entry["sha256"], **info},
    }
    (artifacts / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest[name][key] | {"bytes": out.stat().st_size}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="quantize a shipped model to INT8 QDQ")
    p.add_argument("--data", action="append", required=True, type=Path)
    p.add_argument("--model", default="segmentation")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax")
    p.add_argument("--target", choices=list(BUILDS), default="tensorrt",
                   help="tensorrt: symmetric INT8 both runtimes accept (int8); cpu: ONNX Runtime's faster build (int8_cpu)")
    args = p.parse_args(argv)
    print(json.dumps(quantize_model(args.model, args.data, args.method, target=args.target), indent=1))


if __name__ == "__main__":
    main()
