"""Prefect's `flow` and `task` decorators, built on first real use.

`prefect` costs about a second to import (and pulls its server's client stack); `cirflow run CONFIG --plan` and
the store shortcut (flows/plan.py) never create a flow or task run, so they must not pay for it. These
decorators keep the plain function (`.fn`, what plan mode calls) and build the real Prefect object, with exactly
the keyword arguments given here, the first time anything else is asked of it: a call (a recorded run, a
subflow), `.with_options`, `.submit`, `.map`, `.serve`, `.to_deployment`, ... are all the Prefect object's own.
So a recorded run is the same Prefect flow or task as with `prefect.flow` / `prefect.task` directly.
A cache policy may be named by a string (`cache_policy="NO_CACHE"`): the policy objects are Prefect's own.
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable


class _Lazy:
    _kind = ""  # "flow" | "task": the prefect decorator this stands for

    def __init__(self, fn: Callable, options: dict[str, Any]):
        functools.update_wrapper(self, fn)  # __name__, __qualname__, __doc__, __module__, __wrapped__
        self.fn, self._options = fn, dict(options)
        self._built = None
        self._lock = threading.Lock()

    @property
    def prefect(self):
        """The real Prefect Flow / Task (imports Prefect on first use)."""
        if self._built is None:
            with self._lock:
                if self._built is None:
                    import prefect
                    import prefect.cache_policies

                    options = dict(self._options)
                    if isinstance(options.get("cache_policy"), str):  # "NO_CACHE": Prefect's object, named
                        options["cache_policy"] = getattr(prefect.cache_policies, options["cache_policy"])
                    self._built = getattr(prefect, self._kind)(self.fn, **options)
        return self._built

    @property
    def name(self) -> str:
        """Prefect's name for it, without building it (its rule: the given name, else the function's name)."""
        if self._options.get("name"):
            return self._options["name"]
        return self.prefect.name

    def __call__(self, *args, **kwargs):
        return self.prefect(*args, **kwargs)

    def __getattr__(self, attr: str):
        # only reached for what this wrapper does not define: the Prefect object's API
        if attr.startswith("__") or attr in ("_built", "_options", "_lock", "fn"):
            raise AttributeError(attr)
        return getattr(self.prefect, attr)

    def __repr__(self) -> str:
        return f"<lazy prefect {self._kind} {self.__name__}{' (built)' if self._built is not None else ''}>"


class LazyFlow(_Lazy):
    _kind = "flow"


class LazyTask(_Lazy):
    _kind = "task"


def flow(fn: Callable | None = None, /, **options):
    """`prefect.flow`, deferred: `@flow`, `@flow(name=..., log_prints=...)` or `flow(fn, **options)`."""
    if fn is None:
        return lambda f: LazyFlow(f, options)
    return LazyFlow(fn, options)


def task(fn: Callable | None = None, /, **options):
    """`prefect.task`, deferred: `@task`, `@task(name=..., retries=...)` or `task(fn, **options)`."""
    if fn is None:
        return lambda f: LazyTask(f, options)
    return LazyTask(fn, options)


__all__ = ["LazyFlow", "LazyTask", "flow", "task"]
