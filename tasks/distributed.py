"""Shard-parallel stages on a distributed Prefect task runner (Ray), over a shared fsspec store.

A stage runs as `world` partition tasks, each computing the shards whose index % world == rank and committing
them to the store (the same atomic shard protocol as a local run), then once more on the driver, where every
shard is already committed and only the manifest is written. No scheduler of our own: Prefect submits the
partitions to its task runner (prefect_ray.RayTaskRunner places them on the cluster), the store's commit
records make any partition retryable, and a failed partition leaves committed shards for the rerun.

Which keyword arguments are model handles comes from the stage's declaration (`Stage.models`): those stay in
the driver process, and each partition loads its own model on its worker.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from contextvars import ContextVar

from cirflow.storage.stage_run import shard_partition
from cirflow.tasks.lazy_prefect import task  # Prefect on first use: `--plan` never imports it

_WORLD: ContextVar[int] = ContextVar("cirflow_world", default=1)


@contextmanager
def partitions(world: int):
    """Within this block, stages wrapped by `Sharded` run as `world` partitions on the flow's task runner."""
    token = _WORLD.set(max(1, int(world)))
    try:
        yield
    finally:
        _WORLD.reset(token)


@task(name="stage_partition", cache_policy="NO_CACHE", persist_result=False)
def run_partition(fn, rank: int, world: int, args: tuple, kwargs: dict) -> dict:
    if "rank" in inspect.signature(fn).parameters:  # declared stages take rank and world as arguments
        fn(*args, **kwargs, rank=rank, world=world)
    else:
        with shard_partition(rank, world):
            fn(*args, **kwargs)
    return {"rank": rank}


class Sharded:
    """A stage's Prefect task that fans out over partitions when the flow runs with several workers."""

    def __init__(self, fn, prefect_task, slots: tuple[str, ...]):
        self.fn, self.task, self.slots = fn, prefect_task, tuple(slots)
        self.__name__ = getattr(fn, "__name__", "stage")

    def __call__(self, *args, **kwargs):
        world = _WORLD.get()
        if world <= 1:
            return self.task(*args, **kwargs)
        plain = {k: (None if k in self.slots else v) for k, v in kwargs.items()} | {"progress": False}
        futures = [run_partition.submit(self.fn, rank, world, args, plain) for rank in range(world)]
        for f in futures:
            f.result()  # raises the first partition failure; committed shards stay for the rerun
        art = self.task(*args, **kwargs)
        if art.report is not None and art.report.status == "resumed" and art.report.shards_computed == 0:
            art.report.status = "distributed"
            art.report.stats = dict(art.report.stats, partitions=world)
        return art
