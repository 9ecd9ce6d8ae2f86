"""Training on a handful of real photos at a tiny size: the loss falls, checkpoints resume, export matches."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import torch

from models.losses import task_losses
from models.net import build_net
from models.onnx_export import load_checkpoint
from models.onnx_export import main as export_main
from models.train import cache_sources, load_config, make_batch, make_optimizers, plain, train, train_step

SIZE = 64


def tiny_config(**overrides) -> dict:
    config = {
        "name": "tiny", "epochs": 1, "batch_size": 4, "input_size": SIZE, "threads": 2, "warmup_steps": 1,
        "sources": [{"folder": "refuge-val", "splits": ["train"], "weight": 1.0, "limit": 3},
                    {"folder": "drishti-gs1", "splits": ["train"], "weight": 1.0, "limit": 1}],
        "val_sources": [{"folder": "refuge-val", "splits": ["val"], "limit": 2}],
    }
    config.update(overrides)
    return load_config(overrides=config)


def test_three_steps_reduce_the_loss_on_those_photos(shared_data):
    config = tiny_config(lr=3e-3)
    torch.manual_seed(0)
    views = [v for _, vs in cache_sources(shared_data, config["sources"], ["whole", "disc"], SIZE, False) for v in vs]
    batch = make_batch([plain(v, SIZE) for v in views], SIZE)
    net = build_net(pretrained=True).to(memory_format=torch.channels_last)
    optimizers = make_optimizers(net, config)

    def segmentation_loss() -> float:
        net.train()  # batch statistics, as in the steps themselves
        with torch.no_grad():
            losses = task_losses(net(batch["image"]), batch)
        return float(losses["disc"] + losses["cup"])

    before = segmentation_loss()
    for _ in range(3):
        train_step(net, optimizers, batch, config)
    assert segmentation_loss() < 0.95 * before


def test_training_writes_a_checkpoint_that_resumes_and_exports(shared_data, tmp_path):
    out = tmp_path / "run"
    log = train(tiny_config(epochs=1), out, shared_data, progress=False)
    assert len(log) == 1 and {"disc_dice", "cup_dice", "vcdr_mae", "glaucoma_auc"} <= set(log[0]["val"])
    assert {"last.pt", "best.pt", "config.json", "log.json"} <= {p.name for p in out.iterdir()}
    first = torch.load(out / "last.pt", weights_only=False)

    log = train(tiny_config(epochs=2), out, shared_data, resume=True, progress=False)
    assert [e["epoch"] for e in log] == [1, 2]
    assert log[0] == json.loads((out / "log.json").read_text())[0]  # epoch 1 was kept, not redone
    assert log[1]["steps"] == 2 * log[0]["steps"]
    resumed = torch.load(out / "last.pt", weights_only=False)
    key = "encoder._conv_stem.weight"
    assert not torch.equal(first["model"][key], resumed["model"][key])  # it went on training

    onnx_path = tmp_path / "artifacts" / "segmentation.onnx"
    export_main(["--checkpoint", str(out / "best.pt"), "--out", str(onnx_path)])
    manifest = json.loads((onnx_path.parent / "manifest.json").read_text())["segmentation"]
    assert manifest["file"] == "segmentation.onnx" and manifest["version"].endswith(manifest["sha256"][:8])

    net, _ = load_checkpoint(out / "best.pt")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["disc", "cup", "fovea", "glaucoma"]
    image = np.random.default_rng(1).normal(size=(3, 3, 256, 256)).astype(np.float32)  # batch of 3: N is dynamic
    got = session.run(None, {"image": image})
    with torch.no_grad():
        expected = net(torch.from_numpy(image))
    for name, value in zip(["disc", "cup", "fovea", "glaucoma"], got):
        assert np.abs(value - expected[name].numpy()).max() < 1e-4


def test_synthetic_photos_bring_a_fovea_and_mtl_io_steps_each_task(shared_data):
    from models.train import cache_synthetic

    synthetic = cache_synthetic({"count": 1, "seed": 3}, ["whole", "disc"], SIZE, for_training=False)
    real = [v for _, vs in cache_sources(shared_data, tiny_config()["sources"][:1], ["whole"], SIZE, False) for v in vs]
    assert [v.kind for v in synthetic] == ["whole", "disc"]
    x, y = synthetic[0].fovea
    assert 0 <= x < SIZE and 0 <= y < SIZE
    batch = make_batch([plain(synthetic[0], SIZE), plain(real[0], SIZE)], SIZE)
    assert batch["fovea_known"].tolist() == [True, False]
    peak = np.unravel_index(int(batch["fovea"][0, 0].argmax()), (SIZE, SIZE))
    assert abs(peak[1] - x) <= 1 and abs(peak[0] - y) <= 1 and float(batch["fovea"][1].max()) == 0.0

    config = tiny_config(mode="mtl_io")
    net = build_net(pretrained=False)
    optimizers = make_optimizers(net, config)
    assert sorted(optimizers) == ["cup", "disc", "fovea", "glaucoma"]
    passes: list[int] = []
    net.register_forward_hook(lambda *_: passes.append(1))
    logged = train_step(net, optimizers, batch, config)
    assert set(logged) == {"disc", "cup", "fovea", "glaucoma", "total"}
    assert all(optimizers[t].state for t in optimizers)  # each task stepped its own optimizer
    assert len(passes) == 4  # one MTL-IO step is four forward/backward passes ...
    passes.clear()
    mtl = tiny_config(mode="mtl")
    train_step(net, make_optimizers(net, mtl), batch, mtl)
    assert len(passes) == 1  # ... and a vanilla MTL step one
