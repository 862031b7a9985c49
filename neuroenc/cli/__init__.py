"""The ``neuroenc`` command line: run, validate, plugins, demo-data."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="neuroenc: train and score image-computable encoding models of visual cortex.\n\n"
    "Start with `neuroenc run registry.yaml` (the demo experiment, no data needed), then "
    "point a registry at your Algonauts 2023 download (see registry.algonauts.yaml).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False)
console = Console()
err = Console(stderr=True)

Strict = Annotated[bool, typer.Option("--strict", help="a broken plugin is an error, not a warning")]
Block = Annotated[Optional[list[str]], typer.Option(
    "--block", "-B", help="do not load the plugin with this name (repeatable)")]


def _manager(strict: bool, block: list[str] | None):
    from neuroenc.core.plugins import PluginManager, PluginWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, PluginWarning):
            err.print(f"[yellow]warning:[/] {message}")
        else:
            err.print(f"[yellow]{category.__name__}:[/] {message}")
    warnings.showwarning = show
    return PluginManager(strict=strict, blocked=block or ())


def _fail(exc: Exception) -> None:
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) or \
            isinstance(exc, FileNotFoundError) and exc.filename is not None:
        from neuroenc.core.oserrors import describe_os_error

        exc = describe_os_error(exc)  # one line: path, what failed, space needed and free
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False,
              soft_wrap=True)
    raise typer.Exit(code=1)


def _load(registry_file: Path, strict: bool, block: list[str] | None, *, load_plugins: bool = True,
          unchecked: list | None = None):
    from neuroenc.core.config import RegistryError, load_registry, resolve_registry
    from neuroenc.core.plugins import PluginError

    manager = _manager(strict, block)
    try:
        registry = resolve_registry(load_registry(registry_file), manager,
                                    load_plugins=load_plugins, unchecked=unchecked)
    except (RegistryError, PluginError) as exc:
        _fail(exc)
    return registry, manager


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def run(
    registry_file: Annotated[Optional[Path], typer.Argument(
        help="experiment file (default registry.yaml)")] = None,
    device: Annotated[Optional[str], typer.Option(help="override compute.device (cpu, cuda, ...)")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    models: Annotated[Optional[str], typer.Option(
        "--models", help="run only these models of the registry, comma-separated")] = None,
    subjects: Annotated[Optional[str], typer.Option(
        "--subjects", help="run only these subjects, comma-separated (1,2 or subj01)")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", help="override output.dir (the results folder)")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="override compute.cache_dir")] = None,
    replicates: Annotated[Optional[int], typer.Option(
        "--replicates", min=1, help="train every point of the (chosen) models this many times, "
        "seeds seed, seed+1, ...: summaries give mean ± sd over seeds")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="print the plan (models x subjects x sweep points, feature sets and "
        "whether they are cached) and exit; reads the dataset, fits nothing")] = False,
    resume: Annotated[Optional[Path], typer.Option(
        "--resume", help="finish an interrupted run in its folder: complete parts are kept, "
        "the others redone (with the registry it was started with)")] = None,
    executor: Annotated[Optional[str], typer.Option(
        "--executor", help="override compute.executor: serial (default), local (--jobs "
        "processes), slurm (a job array through submitit; docs/cluster.md)")] = None,
    jobs: Annotated[Optional[int], typer.Option(
        "--jobs", help="override compute.jobs: local processes, or SLURM array tasks at once")] = None,
    slurm_partition: Annotated[Optional[str], typer.Option(
        "--partition", help="override compute.slurm.partition")] = None,
    slurm_time: Annotated[Optional[int], typer.Option(
        "--time-min", help="override compute.slurm.time_min (minutes per task)")] = None,
    slurm_mem: Annotated[Optional[float], typer.Option(
        "--mem-gb", help="override compute.slurm.mem_gb (memory per task)")] = None,
    slurm_gpus: Annotated[Optional[int], typer.Option(
        "--gpus-per-task", help="override compute.slurm.gpus_per_task")] = None,
    slurm_account: Annotated[Optional[str], typer.Option(
        "--account", help="override compute.slurm.account")] = None,
    slurm_options: Annotated[Optional[list[str]], typer.Option(
        "--sbatch", help="a further sbatch option KEY=VALUE (repeatable), e.g. --sbatch qos=high")] = None,
    strict: Strict = False,
    block: Block = None,
) -> None:
    """Train and score every model of REGISTRY_FILE on every subject; write a results folder."""
    from neuroenc.data.subject import DatasetError
    from neuroenc.core.runner import run_registry

    if resume is not None:
        if registry_file is not None or models or subjects or output or cache_dir or replicates:
            _fail(ValueError("--resume RUN_DIR finishes that run with the registry it was started "
                             "with; it takes no REGISTRY_FILE, --models, --subjects, --output, "
                             "--cache-dir or --replicates"))
        registry, manager = _load_run(resume, strict, block)
    else:
        registry, manager = _load(registry_file or Path("registry.yaml"), strict, block)
    if models or subjects or output or cache_dir or replicates:
        from neuroenc.core.config import RegistryError
        from neuroenc.core.plan import narrow_registry

        try:
            registry = narrow_registry(registry, models=_split(models), subjects=_split(subjects),
                                       output=output, cache_dir=cache_dir, replicates=replicates)
        except RegistryError as exc:
            _fail(exc)
    if device is not None:
        registry.compute.device = device
    _override_compute(registry, executor=executor, jobs=jobs, partition=slurm_partition,
                      time_min=slurm_time, mem_gb=slurm_mem, gpus_per_task=slurm_gpus,
                      account=slurm_account, options=slurm_options)
    if dry_run:
        from neuroenc.core.plan import format_plan, plan_run

        try:
            console.print(format_plan(registry, plan_run(registry, manager)), highlight=False,
                          soft_wrap=True, markup=False)
        except (DatasetError, OSError, RuntimeError, ValueError) as exc:
            _fail(exc)
        return
    if not progress:  # also silence the bars of Hugging Face downloads and weight loading
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it too
    from neuroenc.core.executors import make_executor

    log = lambda msg: console.print(msg, highlight=False)  # noqa: E731
    try:
        chosen = make_executor(registry, str(registry.source or "registry"))
        with _torchrun(registry, resume) as (rank, resume):
            if rank > 0:  # the other ranks train alongside rank 0, which alone writes results
                progress, log = False, (lambda msg: None)
            result = run_registry(registry, manager, show_progress=progress, log=log,
                                  resume=resume, executor=chosen)
            if rank > 0:
                return
    except (DatasetError, OSError, RuntimeError, ValueError) as exc:
        _fail(exc)
    console.print()
    _print_summary(result.summary)
    if result.sweep is not None:
        from neuroenc.core.runner import format_sweep

        console.print()
        console.print(format_sweep(result.sweep, result.summary.attrs["variable"]), highlight=False,
                      soft_wrap=True)
    console.print(f"\nresults: {result.run_dir}  ({result.timings['total']:.1f} s)")


def _override_compute(registry, *, executor, jobs, partition, time_min, mem_gb, gpus_per_task,
                      account, options) -> None:
    """Apply the command line's executor options to ``registry.compute``."""
    compute = registry.compute
    if executor is not None:
        if executor not in ("serial", "local", "slurm"):
            _fail(ValueError(f"--executor {executor!r}: expected serial, local or slurm"))
        compute.executor = executor
    if jobs is not None:
        if jobs < 1:
            _fail(ValueError(f"--jobs {jobs}: expected at least 1"))
        compute.jobs = jobs
    for field, value in (("partition", partition), ("time_min", time_min), ("mem_gb", mem_gb),
                         ("gpus_per_task", gpus_per_task), ("account", account)):
        if value is not None:
            setattr(compute.slurm, field, value)
    for option in options or []:
        key, sep, value = option.partition("=")
        if not sep or not key.strip():
            _fail(ValueError(f"--sbatch {option!r}: expected KEY=VALUE, e.g. --sbatch qos=high"))
        compute.slurm.extra[key.strip().lstrip("-")] = value.strip()
    # the registry validated these fields; the command line's values get the same checks
    from neuroenc.core.config import ComputeConfig

    try:
        ComputeConfig.model_validate(compute.model_dump())
    except Exception as exc:  # noqa: BLE001 - pydantic's message names the field
        _fail(ValueError(f"command-line compute options: {exc}"))


@contextlib.contextmanager
def _torchrun(registry, resume):
    """Join a torchrun launch's process group; yield ``(rank, resume)`` for this process.

    Ranks other than 0 write their (identical) results into a temporary folder that is
    removed afterwards, so that only rank 0's run folder exists.
    """
    import shutil
    import tempfile

    from neuroenc.core import distributed
    from neuroenc.core.context import resolve_device

    size = distributed.env_world_size()
    mode = registry.compute.distributed
    if size <= 1:
        if mode == "ddp":
            raise ValueError("compute.distributed: ddp, but this process was not launched by "
                             "torchrun; run: torchrun --nproc_per_node N -m neuroenc run ...")
        yield 0, resume
        return
    if mode == "none":
        raise ValueError(f"launched by torchrun with {size} processes, but compute.distributed "
                         "is none; set it to auto or ddp, or run without torchrun")
    rank, _ = distributed.init_from_env(resolve_device(registry.compute.device))
    scratch = None
    try:
        if rank > 0:
            scratch = Path(tempfile.mkdtemp(prefix=f"neuroenc-rank{rank}-"))
            if resume is not None:
                shutil.copytree(resume, scratch / "run")
                resume = scratch / "run"
            registry.output.dir = scratch / "results"
        yield rank, resume
    finally:
        distributed.shutdown()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _print_summary(summary) -> None:
    """Print one table per subject: ROIs as rows (grouped by class), models as columns."""
    from neuroenc.core.runner import challenge_means, summary_pivot

    variable = summary.attrs.get("variable", "score")
    pivot = summary_pivot(summary)
    models = list(dict.fromkeys(summary.model))  # registry order
    for subject in dict.fromkeys(summary.subject):
        table = Table(title=f"{subject}: median {variable} per ROI", title_justify="left",
                      padding=(0, 1))
        table.add_column("ROI", no_wrap=True)
        for model in models:
            table.add_column(model, justify="right", overflow="fold", min_width=5)
        previous = None
        for (roi_class, roi), row in pivot.iterrows():
            values = [row.get((m, subject)) for m in models]
            cells = ["" if v is None or v != v else f"{v:.1f}" for v in values]
            if roi_class == "all":
                table.add_row(roi, *cells, end_section=True)
                continue
            if roi_class != previous:
                table.add_row(f"[bold]{roi_class}[/]", *[""] * len(models))
                previous = roi_class
            table.add_row(f"  {roi}", *cells)
        console.print(table)
    console.print(f"challenge-style mean {variable} over all vertices of all subjects:")
    for model, value in challenge_means(summary).items():
        console.print(f"  {model}: [bold]{value:.2f}[/]")


def _load_run(run_dir: Path, strict: bool, block: list[str] | None):
    """Return the registry and plugin manager of a run folder (for --resume)."""
    from neuroenc.core.config import RegistryError, resolve_registry
    from neuroenc.core.plan import registry_of_run
    from neuroenc.core.plugins import PluginError

    manager = _manager(strict, block)
    try:
        registry = resolve_registry(registry_of_run(run_dir), manager)
    except (RegistryError, PluginError) as exc:
        _fail(exc)
    return registry, manager


@app.command()
def validate(
    registry_file: Annotated[Path, typer.Argument(help="experiment file to check")],
    load_plugins: Annotated[bool, typer.Option(
        "--load-plugins", help="import the plugins the registry's plugins: names (runs their "
        "code), so that the components they provide are checked too")] = False,
    check_data: Annotated[bool, typer.Option(
        "--check-data", help="also read every chosen subject and verify every image")] = False,
    strict: Strict = False,
    block: Block = None,
) -> None:
    """Check REGISTRY_FILE (structure, plugin names, parameters) without running it.

    Imports the installed plugins (as every command does) but not the plugin files or
    modules the registry names, unless --load-plugins is given.
    """
    unchecked: list[tuple[str, str]] = []
    registry, manager = _load(registry_file, strict, block, load_plugins=load_plugins,
                              unchecked=unchecked)
    n_runs = len(registry.variants())
    sweeps = f" ({n_runs} runs with sweeps expanded)" if n_runs != len(registry.models) else ""
    if registry.plugins and not load_plugins:
        named = ", ".join(registry.plugins)
        console.print(f"[yellow]not imported[/]: the registry's plugins ({named}); "
                      "pass --load-plugins to import them (runs their code) and check what they "
                      "provide", highlight=False, soft_wrap=True)
        for path, message in unchecked:
            console.print(f"[yellow]not checked[/]: {registry_file}: {path}: {message}",
                          highlight=False, soft_wrap=True, markup=True)
    if check_data:
        _check_data(registry, manager)
    console.print(f"[green]ok[/]: {registry_file}: experiment {registry.name!r}, dataset "
                  f"{registry.dataset.kind!r}, {len(registry.models)} model(s){sweeps}: "
                  f"{', '.join(registry.models)}" + (" (data checked)" if check_data else ""))


def _check_data(registry, manager) -> None:
    """Read every chosen subject as a run would and verify every image; fail listing all."""
    from neuroenc.core.config import default_cache_dir
    from neuroenc.core.context import RunContext
    from neuroenc.data.subject import DatasetError
    from neuroenc.stimuli.images import require_valid_images
    from neuroenc.core.runner import _subjects

    cache_dir = (registry.resolve_path(registry.compute.cache_dir)
                 if registry.compute.cache_dir else default_cache_dir())
    context = RunContext(manager=manager, cache_dir=cache_dir, show_progress=False,
                         base_dir=registry.base_dir)
    problems = []
    try:
        reader = context.build("dataset", {"name": registry.dataset.kind, **registry.dataset.params})
        subjects = _subjects(registry, reader)
    except (DatasetError, OSError) as exc:
        _fail(exc)
    for subject in subjects:
        try:
            data = reader.load(subject)
            require_valid_images([*data.train_images, *data.test_images],
                                 root=getattr(data, "root", None),
                                 memo_dir=cache_dir / "image-checks", what=f"{subject} images")
        except DatasetError as exc:
            problems.append(str(exc))
        else:
            console.print(f"[green]ok[/]: {subject}: {len(data.train_images)} training and "
                          f"{len(data.test_images)} test images readable", highlight=False)
    if problems:
        _fail(ValueError("\n".join(problems)))


@app.command()
def plugins(
    registry_file: Annotated[Optional[Path], typer.Argument(
        help="also load the plugins this registry names")] = None,
    strict: Strict = False,
    block: Block = None,
) -> None:
    """List every component by kind, with its provider, version and parameters."""
    from neuroenc.core.plugins import PluginError
    from neuroenc.records import KINDS

    if registry_file is not None:
        _, manager = _load(registry_file, strict, block)
    else:
        manager = _manager(strict, block)
    table = Table(title="neuroenc components", show_lines=True)
    table.add_column("kind", style="bold", no_wrap=True)
    table.add_column("name", style="cyan", no_wrap=True)
    table.add_column("provider (version)", no_wrap=True)
    table.add_column("description; parameters = defaults", overflow="fold", ratio=1)
    for kind in KINDS:
        try:
            components = manager.components(kind)
        except PluginError as exc:
            _fail(exc)
        for name, comp in sorted(components.items()):
            params = "\n".join(f"  {k} = {_default(f)}" for k, f in comp.params.model_fields.items())
            table.add_row(kind, name, f"{comp.provider} ({comp.version or '?'})",
                          comp.description + ("\n" + params if params else ""))
    console.print(table)


def _default(field) -> str:
    if field.is_required():
        return "<required>"
    value = field.get_default(call_default_factory=True)
    if hasattr(value, "name") and hasattr(value, "params"):  # a ComponentRef
        value = value.name
    if isinstance(value, list) and len(value) > 4:
        return f"[{value[0]!r}, ..., {value[-1]!r}] ({len(value)} values)"
    return repr(value)


@app.command("demo-data")
def demo_data(
    path: Annotated[Path, typer.Argument(help="folder to write the dataset into")],
    n_subjects: int = 2, n_train: int = 1000, n_test: int = 200, image_size: int = 128,
    seed: int = 0,
) -> None:
    """Write the embedded demo dataset (Algonauts 2023 layout, fsaverage5) into PATH."""
    from neuroenc_builtins.demo import generate_demo_dataset

    if path.exists() and any(path.iterdir()):
        _fail(ValueError(f"{path}: folder exists and is not empty; choose a new path"))
    root = generate_demo_dataset(path, subjects=tuple(range(1, n_subjects + 1)), n_train=n_train,
                                 n_test=n_test, image_size=image_size, seed=seed, progress=True)
    console.print(f"demo dataset written to {root}")


from neuroenc.cli.analysis import register  # noqa: E402  (plot and report commands)

register(app)

from neuroenc.cli.predict import register as register_predict  # noqa: E402

register_predict(app)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
