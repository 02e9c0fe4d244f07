"""Helpers a loss function uses to see the whole micro-batch across processes.

In-batch contrastive losses (InfoNCE) need every process's features as negatives, or N processes at batch B/N
would train on B/N negatives instead of B. `all_gather_with_grad` concatenates the features of all processes in
rank order, with gradients flowing back to each process's own features (torch.distributed.nn), so the DDP-averaged
gradient equals the one-process gradient at batch B. Without a process group it returns its input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    _, size = world()
    if size == 1:
        return x
    from torch.distributed._functional_collectives import all_gather_single, wait_tensor

    # the functional collective (autograd-aware; torch.distributed.nn.functional.all_gather is deprecated)
    return wait_tensor(all_gather_single(x.contiguous(), 0, dist.group.WORLD))
