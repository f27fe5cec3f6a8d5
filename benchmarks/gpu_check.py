"""One short check for a CUDA machine: training speed, GPU memory, loader headroom, ORT on CUDA.

    python benchmarks/gpu_check.py [--tile 512] [--batch 4] [--steps 10] [--out DIR]
        [--config TRAIN.json --train-steps 50]

Prints, and writes as JSON to ``DIR/gpu_check.json`` (``DIR`` defaults to ``$OUT`` when set):

1. the machine: torch, CUDA, GPU name and memory;
2. training steps/s with AMP and peak GPU memory for resnet50_fpn_v2 and the light backbones at
   ``--tile`` px (synthetic tiles through the real dataset code), RGB and 9-channel;
3. data-loader tiles/s for 0, 4 and 8 workers (RGB and 9-channel) against the tiles/s the GPU
   consumes: the target is a loader at least 5× faster;
4. whether onnxruntime offers and really uses the CUDA provider (``session.get_providers()``);
5. with ``--config``, a short real training run on that config's cache (``--train-steps``);
6. with ``--real``, the whole chain on the synthetic project: a real training run
   (``--train-steps`` steps, AMP, loader workers), ONNX export of its checkpoint, and inference
   tiles/s through onnxruntime (the provider it really used) against the same model in torch on
   the training device.

Runs on a CPU-only machine too: the CUDA parts are skipped with a message and a small CPU
version of (2) and (3) runs instead, so the script can be tested before a GPU is booked.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train


def say(text: str) -> None:
    print(text, flush=True)


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            capability=f"{p.major}.{p.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def train_speed(dataset, backbone: str, channels: str, tile: int, batch: int, steps: int, device):
    """Steps/s with AMP (on CUDA) and peak GPU memory, on real dataset items held in memory."""
    import torch

    from solardesk_maskrcnn.config import ModelSettings
    from solardesk_maskrcnn.dataset import collate
    from solardesk_maskrcnn.model import build_model

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = build_model(ModelSettings(backbone=backbone, channels=channels), tile).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)
    idx = [i for i, s in enumerate(dataset.samples) if s.n_targets] or list(range(len(dataset)))
    idx = (idx * batch)[:batch]
    images, targets = collate([dataset[i] for i in idx])
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]

    def step() -> None:
        with torch.autocast(device_type=device.type, enabled=cuda):
            loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(5 if cuda else 1):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    rate = steps / (time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {
        "backbone": backbone,
        "channels": channels,
        "tile": tile,
        "batch": batch,
        "amp": cuda,
        "steps_per_s": rate,
        "tiles_per_s": rate * batch,
        "peak_gpu_gib": peak,
    }


def ort_check() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"error": f"onnxruntime not installed: {e}"}
    out["version"] = ort.__version__
    out["available_providers"] = ort.get_available_providers()
    if "CUDAExecutionProvider" not in out["available_providers"]:
        out["note"] = (
            "this onnxruntime build has no CUDA provider (the CPU wheel 'onnxruntime'); "
            "install 'onnxruntime-gpu' instead of it (never both) to run inference on the GPU"
        )
        return out
    if not torch.cuda.is_available():
        out["note"] = "CUDA provider listed but no GPU: not asked for (it would log an error)"
        return out
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "relu.onnx"
        onnx.save(model, path)
        sess = ort.InferenceSession(
            str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        out["session_providers"] = sess.get_providers()
    out["cuda_used"] = out["session_providers"][0] == "CUDAExecutionProvider"
    return out


def short_training(config_path: Path, steps: int) -> dict[str, Any]:
    from solardesk_maskrcnn.config import load_train_config
    from solardesk_maskrcnn.train import MaskRCNNTrainer

    cfg = load_train_config(config_path)
    cfg = cfg.model_copy(
        update={
            "optim": cfg.optim.model_copy(update={"epochs": 1}),
            "run": cfg.run.model_copy(update={"max_steps_per_epoch": steps, "log_every": 10}),
        }
    )
    events: list[dict] = []

    def emit(ev: dict) -> None:
        events.append(ev)
        if ev["event"] in ("started", "metrics", "finished", "warning"):
            say("  " + json.dumps({k: v for k, v in ev.items() if k not in ("train",)})[:400])

    t0 = time.perf_counter()
    result = MaskRCNNTrainer(cfg, emit=emit).run()
    progress = [e for e in events if e["event"] == "progress"]
    return {
        "config": str(config_path),
        "seconds": time.perf_counter() - t0,
        "steps": result.step,
        "steps_per_s": progress[-1]["steps_per_s"] if progress else None,
        "first_loss": progress[0]["loss"] if progress else None,
        "last_loss": progress[-1]["loss"] if progress else None,
        "val": result.metrics,
        "checkpoint": str(result.checkpoint),
    }


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def real_chain(cache: Path, root: Path, tile: int, batch: int, steps: int, device) -> dict:
    """Train on ``cache`` for about ``steps`` steps, export to ONNX, time ORT and torch inference.

    The training rate is the steady one: steps between the first and the last progress event
    over the time between them (the first epoch's loader start-up left out).
    """
    import numpy as np
    import torch

    from solardesk_maskrcnn.checkpoint import checkpoint_config, load_checkpoint, load_model_state
    from solardesk_maskrcnn.config import load_train_config
    from solardesk_maskrcnn.model import build_model
    from solardesk_maskrcnn.train import MaskRCNNTrainer
    from solardesk_onnx.export import export_checkpoint
    from solardesk_onnx.runtime import OnnxModel

    cuda = device.type == "cuda"
    per_epoch = 6 if cuda else 1
    cfg = {
        "cache": str(cache),
        "output_dir": str(root / "run"),
        "data": {"split_block_m": 64.0, "val_fraction": 0.2},
        "model": {
            "backbone": "resnet50_fpn_v2" if cuda else "mobilenet_v3_large_fpn",
            "tile_size": tile,
        },
        "optim": {"epochs": max(2, steps // per_epoch), "batch_size": batch, "warmup_steps": 10},
        "run": {
            "device": device.type,
            "amp": True,
            "num_workers": min(8, os.cpu_count() or 1) if cuda else 0,
            "log_every": per_epoch,
            "eval_every": 0,
            "max_steps_per_epoch": per_epoch,
        },
    }
    path = root / "train.json"
    path.write_text(json.dumps(cfg))
    events: list[dict] = []
    t0 = time.perf_counter()
    result = MaskRCNNTrainer(load_train_config(path), emit=events.append).run()
    progress = [e for e in events if e["event"] == "progress"]
    first, last = progress[0], progress[-1]
    span = _seconds(last["time"]) - _seconds(first["time"])
    out: dict[str, Any] = {
        "backbone": cfg["model"]["backbone"],
        "device": next(e for e in events if e["event"] == "started")["device"],
        "seconds": time.perf_counter() - t0,
        "steps": result.step,
        "steady_steps_per_s": (last["global_step"] - first["global_step"]) / span
        if span > 0
        else None,
        "first_loss": first["loss"],
        "last_loss": last["loss"],
        "checkpoint": str(result.checkpoint),
    }
    say("  " + json.dumps(out))
    ckpt = Path(out["checkpoint"])
    onnx_path = root / "model.onnx"
    t0 = time.perf_counter()
    export_checkpoint(ckpt, onnx_path)
    out["export_s"] = time.perf_counter() - t0
    out["onnx_mb"] = onnx_path.stat().st_size / 1e6

    rng = np.random.default_rng(0)
    images = [rng.random((1, 3, tile, tile), dtype=np.float32) for _ in range(4)]
    reps = 20 if cuda else 2
    m = OnnxModel(onnx_path, providers="auto")
    m.run(images[0])
    t0 = time.perf_counter()
    for i in range(reps):
        m.run(images[i % 4])
    out["ort_provider"] = m.provider
    out["ort_tiles_per_s"] = reps / (time.perf_counter() - t0)

    data = load_checkpoint(ckpt)
    model = build_model(checkpoint_config(data, ckpt).model, tile)
    load_model_state(model, data, ckpt)
    model.eval().to(device)
    with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=cuda):
        batch_t = [torch.from_numpy(im[0]).to(device) for im in images]
        model(batch_t[:1])
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(reps):
            model([batch_t[i % 4]])
        if cuda:
            torch.cuda.synchronize()
        out["torch_tiles_per_s_one"] = reps / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(max(1, reps // 4)):
            model(batch_t)
        if cuda:
            torch.cuda.synchronize()
        out["torch_tiles_per_s_batch4"] = 4 * max(1, reps // 4) / (time.perf_counter() - t0)
    out["torch_device"] = device.type
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=512, help="tile size in pixels (GPU)")
    ap.add_argument("--batch", type=int, default=4, help="tiles per training step (GPU)")
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    ap.add_argument("--batches", type=int, default=24, help="timed loader batches")
    ap.add_argument("--out", type=Path, default=os.environ.get("OUT"), help="folder for JSON")
    ap.add_argument("--config", type=Path, help="training config for a short real run")
    ap.add_argument("--train-steps", type=int, default=50, help="steps of the real run")
    ap.add_argument(
        "--no-loader", action="store_true", help="skip the data-loader timings (section 3)"
    )
    ap.add_argument(
        "--real", action="store_true", help="train, export and run ORT on the synthetic project"
    )
    args = ap.parse_args(argv)

    import torch

    report: dict[str, Any] = {"machine": machine()}
    say(json.dumps(report["machine"]))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        # No cudnn.benchmark: the mask head's batch (positive RoIs) changes every step, and
        # benchmark mode would re-tune its convolutions for each new shape.
        tile, batch, steps = args.tile, args.batch, args.steps
        backbones = [
            "resnet50_fpn_v2",
            "resnet18_fpn",
            "mobilenet_v3_large_fpn",
            "efficientnet_lite0_fpn",
        ]
        worker_counts = [0, 4, 8]
    else:
        say("CUDA is not available: skipping the CUDA timings; running a small CPU version.")
        torch.set_num_threads(2)
        tile, batch, steps = 128, 2, 2
        backbones = ["mobilenet_v3_large_fpn"]
        worker_counts = [0, 2]

    with tempfile.TemporaryDirectory() as tmp:
        cache = bench_train.make_project(Path(tmp), tile, n_scenes=8 if cuda else 1, size=1024)
        datasets = {c: bench_train.dataset_for(cache, c) for c in ("rgb", "rgb+spectral")}

        say(f"\n== training speed ({'AMP, ' if cuda else ''}{tile} px, batch {batch}) ==")
        speeds = []
        for backbone in backbones:
            for channels in ("rgb", "rgb+spectral"):
                if channels != "rgb" and backbone != backbones[0]:
                    continue
                try:
                    r = train_speed(
                        datasets[channels], backbone, channels, tile, batch, steps, device
                    )
                except Exception as e:  # report and go on: one failure must not hide the rest
                    r = {"backbone": backbone, "channels": channels, "error": repr(e)}
                    traceback.print_exc()
                speeds.append(r)
                peak = r.get("peak_gpu_gib")
                if cuda:
                    torch.cuda.empty_cache()
                say(
                    f"{backbone:<24} {channels:<13} "
                    + (
                        f"{r['steps_per_s']:7.2f} steps/s {r['tiles_per_s']:8.1f} tiles/s"
                        + (f"  peak {peak:.2f} GiB" if peak is not None else "")
                        if "error" not in r
                        else r["error"]
                    )
                )
        if cuda:  # what cudnn.benchmark would cost: the first model again with it on
            torch.backends.cudnn.benchmark = True
            r = train_speed(datasets["rgb"], backbones[0], "rgb", tile, batch, steps, device)
            torch.backends.cudnn.benchmark = False
            r["cudnn_benchmark"] = True
            speeds.append(r)
            say(f"{backbones[0]:<24} rgb, cudnn.benchmark on {r['steps_per_s']:7.2f} steps/s")
        report["train_speed"] = speeds

        say("\n== loader vs GPU consumption ==")
        loader = []
        for channels, ds in datasets.items() if not args.no_loader else ():
            consume = max(
                (
                    s["tiles_per_s"]
                    for s in speeds
                    if s.get("channels") == channels and "tiles_per_s" in s
                ),
                default=None,
            )
            for workers in worker_counts:
                if workers > (os.cpu_count() or 1):
                    continue
                tiles_s, first = bench_train.loader_rate(ds, batch, workers, args.batches)
                ratio = tiles_s / consume if consume else None
                loader.append(
                    {
                        "channels": channels,
                        "workers": workers,
                        "tiles_per_s": tiles_s,
                        "first_batch_s": first,
                        "fastest_model_tiles_per_s": consume,
                        "loader_over_model": ratio,
                        "meets_5x": bool(ratio and ratio >= 5),
                    }
                )
                say(
                    f"{channels:<13} workers {workers:>2}: {tiles_s:8.1f} tiles/s "
                    f"(first batch {first:.1f} s); fastest model {consume or 0:.1f} tiles/s; "
                    f"ratio {ratio if ratio is None else round(ratio, 2)}"
                )
            ds.source.close()
        report["loader"] = loader

        if args.real:
            say(f"\n== real chain: train {args.train_steps} steps, export, infer ==")
            try:
                report["real_chain"] = real_chain(
                    cache, Path(tmp), tile, batch, args.train_steps if cuda else 2, device
                )
            except Exception as e:
                report["real_chain"] = {"error": repr(e)}
                traceback.print_exc()
            say(json.dumps(report["real_chain"], default=str)[:3000])

    say("\n== onnxruntime ==")
    report["onnxruntime"] = ort_check()
    say(json.dumps(report["onnxruntime"]))

    if args.config:
        say(f"\n== short real training ({args.train_steps} steps) ==")
        try:
            report["real_training"] = short_training(args.config, args.train_steps)
        except Exception as e:
            report["real_training"] = {"error": repr(e)}
            traceback.print_exc()
        say(json.dumps(report["real_training"], default=str)[:2000])

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        say(f"\nwrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
