"""Running a run's tasks beyond this process: local worker processes, or a SLURM job array.

A run is a grid of tasks, one per (subject, model or sweep point): each fits one model
on one subject, scores it and writes its part folder ``models/<model>/<subject>/`` of
the run folder (:func:`neuroenc.core.runner.run_part`). With ``compute.executor: local``
or ``slurm`` the runner hands that grid to an executor here, waits for every task, and
then, in its own process, does what needs all of a subject's parts: the sweep files,
the selection of each swept model's headline point, the models that combine others
(ensembles), the summary and the completion marker (docs/cluster.md).

* :class:`LocalExecutor`: ``jobs`` worker processes (spawned, one GPU each where there
  are enough GPUs, the CPU cores split between them otherwise).
* :class:`SlurmExecutor`: submitit's ``AutoExecutor``, one job array; submitit's own
  files (the pickled tasks, logs) stay in ``<run>/submitit/``.

A task is idempotent: a part that is already complete is kept, an incomplete one redone,
so ``neuroenc run --resume RUN_DIR --executor slurm`` resubmits only the unfinished
tasks. Tasks that need the same features, captions or trainings share them through the
cache's file locks (docs/guarantees.md).

This module imports neither torch nor submitit at import time: a spawned worker and a
SLURM job unpickle :class:`PartTask` by importing it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PartTask", "run_task", "LocalExecutor", "SlurmExecutor", "make_executor",
           "ExecutorError", "TaskFailures"]

MARKER = "complete.json"  # neuroenc.core.run_status.MARKER, without importing the runner


class ExecutorError(ValueError):
    """A bad executor configuration, found before anything is submitted."""


class TaskFailures(RuntimeError):
    """Some tasks failed; the others' parts are written and the run folder can be resumed."""


@dataclass(frozen=True)
class PartTask:
    """One task of a run: fit and score ``model`` on ``subject`` into the run folder."""

    run_dir: str
    subject: str
    model: str
    strict: bool = False
    blocked: tuple[str, ...] = ()
    quiet: bool = False  # local workers: the parent reports progress

    @property
    def label(self) -> str:
        return f"{self.subject} {self.model}"

    def folder(self) -> Path:
        return Path(self.run_dir) / "models" / self.model / self.subject


def run_task(task: PartTask) -> dict:
    """Run one task in this process (a worker or a SLURM job); return its timings.

    Reads the run's registry from its folder (``config.yaml``, as ``--resume`` does), loads
    the subject and runs the part with the run folder's resume rules: a complete part is
    kept, anything else is redone.
    """
    from neuroenc.core.runner import run_one_part

    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():  # torch would start a thread per core of the node, not of the task
        import torch

        torch.set_num_threads(int(cpus))
    t0 = time.perf_counter()
    timings = run_one_part(Path(task.run_dir), task.subject, task.model, strict=task.strict,
                           blocked=task.blocked, log=(lambda msg: None) if task.quiet else print)
    return {"task": task.label, "seconds": time.perf_counter() - t0, "host": os.uname().nodename,
            "timings": timings}


def _pending(tasks: list[PartTask], log) -> list[PartTask]:
    """Return the tasks whose part has no completion marker (the task checks the rest)."""
    todo = [t for t in tasks if not (t.folder() / MARKER).is_file()]
    if len(todo) < len(tasks):
        log(f"{len(tasks) - len(todo)} of {len(tasks)} tasks complete; running the other {len(todo)}")
    return todo


def _report(done: int, total: int, result: dict, log) -> None:
    log(f"[{done}/{total}] {result['task']}: done in {result['seconds']:.1f} s on {result['host']}")


def _raise_failures(failures: list[tuple[PartTask, str]], run_dir: Path, executor: str) -> None:
    if failures:
        lines = "\n".join(f"  {task.label}: {reason}" for task, reason in failures)
        raise TaskFailures(f"{len(failures)} task(s) failed:\n{lines}\nthe other parts are "
                           f"written; after a fix, run: neuroenc run --resume {run_dir} "
                           f"--executor {executor}")


# --------------------------------------------------------------------------- local

def _init_worker(gpus, threads: int) -> None:
    """Worker set-up: its GPU (one per worker where there are enough) and its CPU threads."""
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get())
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


class LocalExecutor:
    """Run tasks in ``jobs`` spawned processes on this machine.

    With a CUDA device and at least ``jobs`` GPUs, each worker sees one GPU
    (``CUDA_VISIBLE_DEVICES``); otherwise the CPU cores are split evenly between workers.
    """

    name = "local"

    def __init__(self, jobs: int, device: str):
        self.jobs = jobs
        self.device = device

    def run(self, tasks: list[PartTask], run_dir: Path, log=print) -> list[dict]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        tasks = _pending(tasks, log)
        if not tasks:
            return []
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        gpus = None
        if self.device.startswith("cuda") or self.device == "auto":
            count = _cuda_count()
            if count >= self.jobs:
                gpus = ctx.Manager().Queue()
                for i in range(self.jobs):
                    gpus.put(i)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        log(f"running {len(tasks)} tasks in {self.jobs} local processes"
            + (f", one GPU each" if gpus is not None else f", {threads} CPU thread(s) each"))
        results, failures = [], []
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, initializer=_init_worker,
                                 initargs=(gpus, threads)) as pool:
            futures = {pool.submit(run_task, task): task for task in tasks}
            for future in as_completed(futures):
                try:
                    results.append(future.result())
                    _report(len(results), len(tasks), results[-1], log)
                except Exception as exc:  # noqa: BLE001 - reported with its task, the rest go on
                    failures.append((futures[future], f"{type(exc).__name__}: {exc}"))
                    log(f"[failed] {futures[future].label}: {type(exc).__name__}: {exc}")
        _raise_failures(failures, run_dir, self.name)
        return results


def _cuda_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA is zero GPUs
        return 0


# --------------------------------------------------------------------------- SLURM

class SlurmExecutor:
    """Submit tasks as one SLURM job array through submitit, and wait for them."""

    name = "slurm"
    poll_s = 2.0

    def __init__(self, slurm, jobs: int | None, experiment: str):
        self.slurm = slurm  # neuroenc.core.config.SlurmConfig
        self.jobs = jobs
        self.experiment = experiment

    def parameters(self) -> dict:
        """Return submitit AutoExecutor parameters for the configured sbatch options."""
        s = self.slurm
        params = {"name": f"neuroenc-{self.experiment}", "timeout_min": s.time_min,
                  "cpus_per_task": s.cpus_per_task, "slurm_additional_parameters": dict(s.extra)}
        if s.partition:
            params["slurm_partition"] = s.partition
        if s.mem_gb is not None:
            params["mem_gb"] = s.mem_gb
        if s.gpus_per_task:
            params["gpus_per_node"] = s.gpus_per_task
        if s.account:
            params["slurm_account"] = s.account
        if self.jobs:
            params["slurm_array_parallelism"] = self.jobs
        return params

    def run(self, tasks: list[PartTask], run_dir: Path, log=print) -> list[dict]:
        import submitit

        tasks = _pending(tasks, log)
        if not tasks:
            return []
        executor = submitit.AutoExecutor(folder=Path(run_dir) / "submitit" / "%j", cluster="slurm")
        executor.update_parameters(**self.parameters())
        t0 = time.perf_counter()
        jobs = executor.map_array(run_task, tasks)
        log(f"submitted {len(tasks)} tasks as SLURM job array {jobs[0].job_id.split('_')[0]} "
            f"(submitit files: {Path(run_dir) / 'submitit'})")
        pending = dict(zip(jobs, tasks))
        results, failures = [], []
        while pending:
            for job in [j for j in pending if j.done()]:
                task = pending.pop(job)
                try:
                    results.append(job.result())
                    _report(len(results) + len(failures), len(tasks), results[-1], log)
                except Exception as exc:  # noqa: BLE001 - submitit's error carries the job's log
                    reason = _last_line(str(exc))
                    failures.append((task, f"job {job.job_id}: {reason} (log: {job.paths.stderr})"))
                    log(f"[failed] {task.label}: job {job.job_id}: {reason}")
            if pending:
                time.sleep(self.poll_s)
        log(f"SLURM job array finished in {time.perf_counter() - t0:.1f} s")
        _raise_failures(failures, run_dir, self.name)
        return results


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["failed"])[-1][:300]


def slurm_partitions() -> tuple[list[str], str | None]:
    """Return the partitions ``sinfo`` lists and the default one (marked ``*``)."""
    out = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0:
        raise ExecutorError(f"compute.executor: slurm, but `sinfo` failed: "
                            f"{(out.stderr or out.stdout).strip() or out.returncode} (is slurmctld "
                            "reachable from here?)")
    names, default = [], None
    for line in out.stdout.split():
        name = line.strip().rstrip("*")
        if line.strip().endswith("*"):
            default = name
        if name and name not in names:
            names.append(name)
    return names, default


# --------------------------------------------------------------------------- choosing one

def make_executor(registry, where: str = "registry"):
    """Return the executor ``registry.compute`` asks for (None: serial), after checking it.

    Every check runs here, before a run folder is made or anything submitted.

    Raises
    ------
    ExecutorError
        No ``sbatch`` on PATH, an unknown partition, GPUs asked for a CPU run (or none for
        a CUDA run), submitit not installed, a torchrun launch with a parallel executor.
    """
    compute = registry.compute
    if compute.executor == "serial":
        return None
    from neuroenc.core.distributed import env_world_size

    if env_world_size() > 1:
        raise ExecutorError(f"{where}: compute.executor: {compute.executor}, but this process was "
                            "launched by torchrun (WORLD_SIZE > 1); a torchrun launch runs the "
                            "serial executor with DDP training: drop --executor or torchrun")
    device = compute.device
    if compute.executor == "local":
        return LocalExecutor(compute.jobs or 2, device)
    slurm = compute.slurm
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ExecutorError(f"{where}: compute.executor: slurm needs the submitit package; "
                            "pip install submitit") from None
    if shutil.which("sbatch") is None:
        raise ExecutorError(f"{where}: compute.executor: slurm, but there is no sbatch on PATH "
                            "(run on a SLURM login node; for a one-node cluster on this machine "
                            "see docs/cluster.md, .ci/slurm-up)")
    if shutil.which("sinfo") is None:
        raise ExecutorError(f"{where}: compute.executor: slurm, but there is no sinfo on PATH "
                            "(sbatch is there; a partial SLURM client install?)")
    names, default = slurm_partitions()
    if slurm.partition is not None and slurm.partition not in names:
        raise ExecutorError(f"{where}: compute.slurm.partition: unknown partition "
                            f"{slurm.partition!r}; sinfo lists: {', '.join(names) or 'none'}")
    if slurm.partition is None and default is None:
        raise ExecutorError(f"{where}: compute.slurm.partition: not set and the cluster has no "
                            f"default partition; sinfo lists: {', '.join(names) or 'none'}")
    if slurm.gpus_per_task and device == "cpu":
        raise ExecutorError(f"{where}: compute.slurm.gpus_per_task: {slurm.gpus_per_task}, but "
                            "compute.device is cpu: every task would hold GPUs it never uses; set "
                            "gpus_per_task: 0, or device: cuda")
    if device.startswith("cuda") and not slurm.gpus_per_task:
        raise ExecutorError(f"{where}: compute.device is {device}, but compute.slurm.gpus_per_task "
                            "is 0: the tasks would get no GPU; set gpus_per_task: 1")
    if device.startswith("cuda:"):
        raise ExecutorError(f"{where}: compute.device: {device}; on SLURM each task sees the GPUs "
                            "it was given, so use device: cuda")
    return SlurmExecutor(slurm, compute.jobs, registry.name)
