"""The ``neuroenc predict`` command: a saved encoder's predictions for new images.

Added to the main app by :func:`register`; torch and the backbone are imported only when
the command runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

__all__ = ["register", "predict"]

console = Console()
err = Console(stderr=True)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder, e.g. results/demo/latest")],
    images: Annotated[list[Path], typer.Argument(help="image files and/or folders of images")],
    model: Annotated[str, typer.Option("--model", "-m", help="model name in the run")],
    subject: Annotated[str, typer.Option("--subject", "-s", help="subject (subj01 or 1)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="netCDF file of the "
                                         "predictions (image x vertex)")] = Path("predictions.nc"),
    roi: Annotated[Optional[list[str]], typer.Option(
        "--roi", help="rank the images by this ROI's mean predicted response (repeatable), "
        "e.g. FFA-1")] = None,
    top: Annotated[int, typer.Option(help="how many most and least driving images to "
                                     "print and show per ROI", min=1)] = 20,
    plot: Annotated[bool, typer.Option("--plot", help="also draw the mean predicted map on "
                                       "the surface (or in the volume)")] = False,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    num_workers: Annotated[int, typer.Option(min=0, help="DataLoader processes decoding "
                                             "the images")] = 0,
    device: Annotated[str, typer.Option(help="torch device")] = "cpu",
    checkpoint: Annotated[Optional[Path], typer.Option(
        help="the backbone's weights file, where the run's is not on this machine")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Predict every vertex's response to IMAGES with a saved encoder; write OUTPUT.

    Streams the images in batches (any number fits). With --roi, prints the images that
    drive the ROI most and least, and writes OUTPUT_<roi>_ranking.csv (every image) and
    OUTPUT_<roi>_top<N>.png (a contact sheet of the top and bottom N).
    """
    from neuroenc.core.context import RunContext, resolve_device
    from neuroenc.core.encoders import EncoderError, load_encoder
    from neuroenc.core.plugins import UnknownComponentError

    try:
        encoder = load_encoder(run_dir, model, subject, device=resolve_device(device),
                               batch_size=batch_size, num_workers=num_workers,
                               checkpoint_path=str(checkpoint) if checkpoint else None)
        for name in roi or ():
            encoder.roi_mask(name)  # an unknown ROI fails before any image is read
        from neuroenc.core.encoders import _collect_images

        n_images = len(_collect_images(images).names)
    except (EncoderError, UnknownComponentError, OSError) as exc:
        _fail(str(exc))
    context = RunContext(manager=None, cache_dir=Path("."), show_progress=progress)
    with context.progress(f"{encoder.model} {encoder.subject}: predicting", n_images) as advance:
        try:
            summary = encoder.predict_to_file(images, output, batch_size=batch_size,
                                              rois=roi or (), progress=advance)
        except (EncoderError, OSError) as exc:
            _fail(str(exc))
    console.print(f"{n_images} images x {encoder.n_vertices} vertices -> {output}", highlight=False)
    for name in roi or ():
        _report_roi(summary, name, top, output, encoder)
    if plot:
        _plot_mean(summary, encoder, output)


def _report_roi(summary, roi: str, top: int, output: Path, encoder) -> None:
    import pandas as pd

    from neuroenc.core.cache import atomic_path
    from neuroenc.viz.contact_sheet import contact_sheet

    order = summary.ranking(roi)
    values = summary.roi_means[roi]
    table = pd.DataFrame({"rank": range(1, len(order) + 1),
                          "image": [summary.names[i] for i in order],
                          "roi_mean": values[order]})
    if summary.paths is not None:
        table["path"] = [str(summary.paths[i]) for i in order]
    stem = output.with_suffix("")
    csv = Path(f"{stem}_{_safe(roi)}_ranking.csv")
    with atomic_path(csv) as tmp:
        table.to_csv(tmp, index=False)
    k = min(top, len(order))
    most, least = order[:k], order[::-1][:k]
    shown = Table(title=f"{encoder.subject} {roi}: mean predicted response", title_justify="left")
    shown.add_column("rank", justify="right")
    shown.add_column("most driving")
    shown.add_column(roi, justify="right")
    shown.add_column("least driving")
    shown.add_column(roi, justify="right")
    for r, (i, j) in enumerate(zip(most, least), start=1):
        shown.add_row(str(r), summary.names[i], f"{values[i]:.3f}", summary.names[j], f"{values[j]:.3f}")
    console.print(shown)
    console.print(f"ranking of all {len(order)} images: {csv}", highlight=False)
    if summary.paths is not None:
        sheet = contact_sheet(
            [(f"most driving {roi} (top {k})", [summary.paths[i] for i in most],
              [f"{values[i]:.3f}" for i in most]),
             (f"least driving {roi} (bottom {k})", [summary.paths[i] for i in least],
              [f"{values[i]:.3f}" for i in least])],
            Path(f"{stem}_{_safe(roi)}_top{k}.png"),
            title=f"{encoder.model} {encoder.subject}: predicted mean {roi} response")
        console.print(f"contact sheet: {sheet}", highlight=False)


def _plot_mean(summary, encoder, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import xarray as xr

    from neuroenc.viz.plotting.surface import plot_map

    coords = {k: ("vertex", v.values) for k, v in encoder.vertices.coords.items()}
    mean = xr.DataArray(summary.mean_map, dims="vertex", coords=coords, name="predicted",
                        attrs=dict(encoder.vertices.attrs))
    path = Path(f"{output.with_suffix('')}_mean_map.png")
    plot_map(mean, diverging=True, title=f"{encoder.model} {encoder.subject}: mean predicted "
             f"response ({len(summary.names)} images)", out=path)
    console.print(f"mean predicted map: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the predict command to ``app``."""
    app.command("predict")(predict)
