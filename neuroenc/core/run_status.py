"""Completion markers of a run folder, and the sweep of killed runs' leftovers.

The runner writes ``complete.json`` into each ``models/<model>/<subject>/`` folder after
that part's last file, and into the run folder after the run's last file. A run killed
part-way keeps the parts it finished; :func:`run_status` tells a complete run from a
half one and names what is missing, and :func:`neuroenc.evaluation.results.load_run` refuses a half
run unless asked to load its finished parts.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from neuroenc.core.cache import sweep_stale, write_json_atomic

__all__ = ["MARKER", "IncompleteRunError", "RunStatus", "mark_complete", "run_status",
           "sweep_leftovers"]

MARKER = "complete.json"
# Cache layout depth to sweep: <cache>/<kind>/<entry> and <cache>/captions/<key>/<file>.
_CACHE_DEPTH = 3
_RESULTS_DEPTH = 6  # <experiment>/<run>/models/<model>/<subject>/<file>


class IncompleteRunError(ValueError):
    """A run folder lacks its completion marker (killed, failed or still running)."""

    def __init__(self, status: RunStatus):
        self.status = status
        missing = ", ".join(status.missing[:8]) + (
            f", ... ({len(status.missing)} parts)" if len(status.missing) > 8 else "")
        parts = f"; missing: {missing}" if status.missing else ""
        super().__init__(
            f"{status.run_dir}: incomplete run (no {MARKER}: it was killed, failed or is still "
            f"running){parts}; {len(status.complete)} part(s) finished. Rerun the experiment, "
            "or pass allow_incomplete=True to load the finished parts")


@dataclass
class RunStatus:
    """Whether a run folder is complete, and which ``(model, subject)`` parts are."""

    run_dir: Path
    finished: bool
    complete: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # 'models/<model>/<subject>'


def mark_complete(folder: str | Path) -> None:
    """Write the completion marker into ``folder`` (call after its last file is in place)."""
    write_json_atomic(Path(folder) / MARKER, {
        "finished": _dt.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()})


def run_status(run_dir: str | Path) -> RunStatus:
    """Return the completion status of a run folder.

    A run is finished when its ``complete.json`` exists. Runs written before markers
    existed count as finished when ``environment.json`` has a ``finished`` time and no
    ``planned`` list (every part of theirs then counts as complete), as do folders with
    no ``environment.json`` at all (results collected by hand).
    """
    run_dir = Path(run_dir)
    env_file = run_dir / "environment.json"
    try:
        environment = json.loads(env_file.read_text())
    except (OSError, ValueError):
        environment = {}
    planned = environment.get("planned")
    # A folder without environment.json is no runner's (the runner writes it first thing):
    # results put together by hand, read as they are.
    legacy = planned is None and ("finished" in environment or not env_file.exists())
    finished = (run_dir / MARKER).is_file() or legacy
    complete, missing = [], []
    parts = {(p.parent.parent.name, p.parent.name) for p in run_dir.glob("models/*/*/scores.nc")}
    if planned:
        parts |= {(m, s) for m in planned.get("models", []) for s in planned.get("subjects", [])}
    for model, subject in sorted(parts):
        folder = run_dir / "models" / model / subject
        if legacy or (folder / MARKER).is_file():
            complete.append((model, subject))
        else:
            missing.append(f"models/{model}/{subject}")
    return RunStatus(run_dir, finished, complete, missing)


def sweep_leftovers(cache_dir: str | Path, experiment_dir: str | Path) -> list[Path]:
    """Remove temporaries of killed runs from a cache and an experiment's results; return them.

    See :func:`neuroenc.core.cache.sweep_stale`: only files and folders of processes that are
    gone, or older than :data:`neuroenc.core.cache.STALE_AFTER_S`, are removed.
    """
    return [*sweep_stale(cache_dir, depth=_CACHE_DEPTH),
            *sweep_stale(experiment_dir, depth=_RESULTS_DEPTH)]

