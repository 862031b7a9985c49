"""What LLM-VEM training needs to run under DistributedDataParallel (torchrun, N ranks).

The aim is that N ranks train the model one process would train with the same global
batch (tests/test_distributed.py checks it with gloo on CPU):

* every rank draws the same global batch order (the seeded permutation), and takes its
  contiguous share of each batch (:func:`shard`);
* losses are of the global batch: the MSE of a shard is weighted by its share of the
  batch, the contrastive loss sees every rank's embeddings (:func:`gather_rows`, as
  open_clip's ``gather_features``), so in-batch negatives and lambda mean the same at
  any world size;
* BatchNorm of the head normalises with the statistics of the global batch
  (:class:`GlobalBatchNorm1d`; torch's SyncBatchNorm runs on GPUs only);
* DDP averages gradients over ranks, so each rank's share of the MSE is multiplied by
  the world size (:func:`rank_loss` says why);
* only rank 0 validates, writes checkpoints and holds the training's cache lock;
  the others receive its decisions (:func:`broadcast_float`, :func:`main_rank_lock`).

Without a process group every helper is the identity and nothing is communicated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from neuroenc.core.distributed import is_main, rank, world_size

__all__ = ["shard", "gather_rows", "rank_loss", "GlobalBatchNorm1d", "sync_batchnorm",
           "broadcast_float", "all_reduce_sum", "wrap_ddp", "main_rank_lock", "check_batch_size"]


def shard(batch: torch.Tensor) -> torch.Tensor:
    """Return this rank's contiguous part of a global batch of sample indices.

    Parts differ in size by at most one; concatenated in rank order they are ``batch``.
    """
    size = world_size()
    if size == 1:
        return batch
    return batch.tensor_split(size)[rank()]


def check_batch_size(batch_size: int, stage: str) -> None:
    """Raise ValueError when a global batch cannot give every rank a sample."""
    if batch_size < world_size():
        raise ValueError(f"llm-vem stage {stage!r}: batch_size {batch_size} is smaller than the "
                         f"{world_size()} ranks of this DDP run; the batch size is global (split "
                         "across ranks), so use at least one sample per rank")


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Return every rank's rows of ``x`` concatenated in rank order (the global batch).

    The exchange is differentiable (open_clip's ``gather_with_grad=True``): a loss of the gathered rows, computed alike on every rank,
    sends each rank's gradient back to the rows' owners, so every parameter of the loss
    (the embeddings' and a learnable temperature alike) gets the gradient of the global
    batch, and DDP's average over ranks keeps it. Shards of different sizes are padded
    for the exchange and cut back.
    """
    size = world_size()
    if size == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(n) for _ in range(size)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    pad = max(counts) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    parts = _AllGather.apply(padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _AllGather(torch.autograd.Function):
    """all_gather with a backward: each rank's rows get the sum over ranks of their gradient."""

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class _AllReduceSum(torch.autograd.Function):
    """all_reduce (sum) with a backward: the sum over ranks of the gradient."""

    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def rank_loss(local_mse: torch.Tensor, n_local: int, n_global: int,
              global_terms: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Return the loss this rank back-propagates so that DDP's averaged gradient is exact.

    DDP divides the sum of the ranks' gradients by the world size W. The mean-squared
    error of the global batch is the sum over ranks of ``n_local / n_global`` times each
    shard's MSE; each rank's part of it therefore enters times W. A global term (the
    contrastive loss of :func:`gather_rows`' output) has the same value on every rank
    and, through the differentiable gather, W times its gradient in total, which DDP's
    average brings back to one: it enters as it is. With one process this is
    ``local_mse + global_terms``.
    """
    size = world_size()
    if size == 1:
        return local_mse + global_terms
    return size * (n_local / n_global) * local_mse + global_terms


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d that, in training under a process group, uses the global batch's statistics.

    The same parameters and buffers as ``nn.BatchNorm1d`` (a checkpoint or saved encoder
    does not know the difference); in eval mode or without a process group it is
    ``nn.BatchNorm1d``. Sums and sums of squares are all-reduced with gradient, so the backward pass is the
    one-process backward of the global batch. Works with gloo (CPU) and NCCL.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or world_size() == 1 or x.ndim != 2:
            return super().forward(x)
        x32 = x.float()
        local = torch.cat([x32.sum(0), (x32 * x32).sum(0),
                           x32.new_full((1,), float(x.shape[0]))])
        total = _AllReduceSum.apply(local)
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)  # biased, as BatchNorm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                            else self.momentum)
                unbiased = var * (n / (n - 1).clamp_min(1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased.detach())
        out = (x32 - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Turn every ``nn.BatchNorm1d`` below ``module`` into :class:`GlobalBatchNorm1d`, in place.

    Parameters and buffers are kept (the instance's class changes, nothing is copied),
    so optimizers and state dicts are unaffected. Returns ``module``.
    """
    for sub in module.modules():
        if type(sub) is nn.BatchNorm1d:
            sub.__class__ = GlobalBatchNorm1d
    return module


def broadcast_float(value: float) -> float:
    """Return rank 0's ``value`` on every rank."""
    if world_size() == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, src=0)
    return float(t.item())


def all_reduce_sum(values: list[float]) -> list[float]:
    """Return the sum over ranks of each value."""
    if world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """Return ``module`` wrapped in DistributedDataParallel under a process group, else itself."""
    if world_size() == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def main_rank_lock(lock) -> Iterator[None]:
    """Hold ``lock`` (a filelock) on rank 0 while all ranks run the block.

    The other ranks wait for rank 0 to have the lock (a barrier), so that when another
    run trains the same model first, every rank of this one then finds its checkpoint.
    """
    if world_size() == 1:
        with lock:
            yield
        return
    if is_main():
        lock.acquire()
    try:
        dist.barrier()
        yield
        dist.barrier()  # rank 0 has written the final checkpoint before the lock goes
    finally:
        if is_main():
            lock.release()
