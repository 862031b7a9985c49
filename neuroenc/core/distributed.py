"""The torch.distributed process group of a run launched by ``torchrun`` (one process per GPU).

``torchrun --nproc_per_node N -m neuroenc run REGISTRY`` starts N copies of the command,
each with ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in
its environment. :func:`init_from_env` joins them into one process group (NCCL on
CUDA, gloo on CPU); recipes that train with DistributedDataParallel (``llm-vem``) then
shard their samples across the ranks. Everything else of the run is computed on every
rank alike, and only rank 0 writes the run folder (the others write into a temporary
folder that is removed at the end; docs/cluster.md).
"""

from __future__ import annotations

import datetime as _dt
import os

__all__ = ["env_world_size", "init_from_env", "rank", "world_size", "is_main", "shutdown"]

#: How long a rank waits at a collective (e.g. for rank 0 holding a training's cache lock
#: that another run took first) before the process group gives up.
TIMEOUT = _dt.timedelta(hours=2)


def env_world_size() -> int:
    """Return ``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable WORLD_SIZE={value!r}; expected an integer "
                         "(torchrun sets it)") from None


def init_from_env(device: str) -> tuple[int, int]:
    """Join the process group of a torchrun launch; return ``(rank, world_size)``.

    ``device``: the run's resolved device. On CUDA each rank takes GPU ``LOCAL_RANK`` and
    the NCCL backend, elsewhere gloo. Without torchrun (``WORLD_SIZE`` unset or 1) nothing
    happens and ``(0, 1)`` is returned.
    """
    import torch
    import torch.distributed as dist

    size = env_world_size()
    if size <= 1:
        return 0, 1
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={size} but {', '.join(missing)} not set; launch with "
                         "torchrun --nproc_per_node N -m neuroenc run ...")
    backend = "gloo"
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local}, but this node has {torch.cuda.device_count()} "
                             "CUDA device(s); use --nproc_per_node at most that")
        torch.cuda.set_device(local)
        backend = "nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def rank() -> int:
    """Return this process's rank (0 without a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Return the number of processes in the group (1 without a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Return whether this process writes results and checkpoints (rank 0)."""
    return rank() == 0


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
