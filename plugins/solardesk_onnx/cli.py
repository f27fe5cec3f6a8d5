"""The plugin's commands: ``solardesk export-onnx`` and ``solardesk onnx-info``.

Imported whenever ``solardesk`` starts (to add the commands), so nothing heavy at module
level: torch is imported inside ``export-onnx``, onnxruntime inside ``onnx-info``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from solardesk_onnx.errors import ModelFileError

__all__ = ["export_onnx", "onnx_info"]


@click.command("export-onnx")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The .onnx file to write."
)
@click.option(
    "--gsd",
    type=float,
    help="Ground resolution (m/px) the model was trained at. Default: recorded in the "
    "checkpoint, or the median of the training cache's rasters.",
)
@click.option(
    "--overlap",
    type=int,
    help="Tile overlap in pixels recommended with the model (stored in its metadata). "
    "Default: 64, at most half the model's tile.",
)
@click.option(
    "--score-threshold",
    type=float,
    help="Score from which detections are panels (metadata; read-time). Default: the "
    "training config's run.score_threshold.",
)
@click.option(
    "--mask-threshold", default=0.5, show_default=True, help="Mask probability of a panel pixel."
)
@click.option(
    "--min-score",
    default=0.05,
    show_default=True,
    help="Detections below this score are dropped inside the graph (baked in).",
)
@click.option(
    "--detections",
    type=int,
    help="Most detections per tile (baked in). Default: the checkpoint's detections_per_img.",
)
@click.option(
    "--dynamic",
    is_flag=True,
    help="Accept any height and width (default: the tile size only, which runs faster and is "
    "what GeoDeep reads its tile size from).",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8", "int8-matmul"]),
    help="Quantise to int8 with onnxruntime's dynamic quantisation (every supported operator, "
    "or MatMul/Gemm only): a smaller file. On the CPUs measured it is not faster and masks "
    "degrade (benchmarks/bench_infer.py: int8 0.26x the fp32 speed, worst-tile mask IoU "
    "0.50; int8-matmul 1.05x, recall 0.95); check it on your hardware. Default: fp32.",
)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export_onnx(
    checkpoint: Path,
    out: Path,
    gsd: float | None,
    overlap: int | None,
    score_threshold: float | None,
    mask_threshold: float,
    min_score: float,
    detections: int | None,
    dynamic: bool,
    quantize: str | None,
    overwrite: bool,
) -> None:
    """Export a training CHECKPOINT to an ONNX model with its metadata.

    The model takes one tile (1, C, H, W) in [0, 1] and returns boxes, scores, labels and
    28 × 28 mask logits; SolarDesk pastes the masks. Its metadata (class names, channels and
    normalisation, tile size, overlap, ground resolution, thresholds, SolarDesk version, and the
    keys Deepness and GeoDeep read) travels with the file. The result is checked with
    onnx.checker and loaded once with onnxruntime.
    """
    from solardesk.errors import ConfigError

    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: name a file ending in .onnx.")
    if not out.parent.is_dir():
        raise ModelFileError(
            f"{out}: the folder {out.parent} does not exist. Create it or choose another --out."
        )
    if out.exists() and not overwrite:
        raise ModelFileError(f"{out}: exists already. Pass --overwrite to replace it.")
    if gsd is not None and gsd <= 0:
        raise ConfigError(f"--gsd {gsd}: the ground resolution must be a positive number of m.")
    for name, value in (("--score-threshold", score_threshold), ("--min-score", min_score)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{name} {value}: a score lies between 0 and 1.")
    if not 0 < mask_threshold < 1:
        raise ConfigError(f"--mask-threshold {mask_threshold}: choose a value between 0 and 1.")

    from solardesk_onnx.export import export_checkpoint

    t0 = time.perf_counter()
    summary = export_checkpoint(
        checkpoint,
        out,
        gsd_m=gsd,
        overlap=overlap,
        score_threshold=score_threshold,
        mask_threshold=mask_threshold,
        min_score=min_score,
        detections_per_img=detections,
        fixed_shape=not dynamic,
        quantize=quantize,
    )
    import numpy as np

    from solardesk_onnx.runtime import OnnxModel

    exported_s = time.perf_counter() - t0
    model = OnnxModel(out)
    size = model.spec.tile_size
    image = model.prepare(np.zeros((size, size, 3), np.uint8), None, None)
    t1 = time.perf_counter()
    model.run(image[None])
    run_s = time.perf_counter() - t1
    shape = f"{size}×{size} px" if not dynamic else f"any size (tile {size} px)"
    click.echo(
        f"{out}: {summary['backbone']}, {'+'.join(_short_channels(summary['channels']))} "
        f"input, {shape}{', int8 (' + quantize + ')' if quantize else ''}, trained at "
        f"{summary['gsd_m']:.3f} m/px; onnx.checker passed; "
        f"onnxruntime ({model.provider}) runs one tile in {run_s:.2f} s; "
        f"exported in {exported_s:.1f} s"
    )


def _short_channels(channels: list[str]) -> list[str]:
    return ["rgb"] + (["6 spectral"] if len(channels) > 3 else [])


@click.command("onnx-info")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
@click.option(
    "--providers",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Execution provider to try.",
)
def onnx_info(model: Path, as_json: bool, providers: str) -> None:
    """Describe an ONNX MODEL: what it expects, its metadata, and the provider it runs on."""
    from solardesk_onnx.runtime import OnnxModel, describe

    facts = describe(OnnxModel(model, providers=providers))
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    width = max(len(k) for k in facts)
    for k, v in facts.items():
        click.echo(f"{k:<{width}}  {v if not isinstance(v, list) else ', '.join(map(str, v))}")
