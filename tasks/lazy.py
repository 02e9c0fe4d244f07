"""A model handle that loads on first use: a fully cached stage never loads weights or launches a server,
and one handle can be shared by several stages (and benchmark groups) of a flow so a model loads once."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Lazy(Generic[T]):
    def __init__(self, factory: Callable[[], T]):
        self._factory, self._obj = factory, None

    @property
    def loaded(self) -> bool:
        return self._obj is not None

    def get(self) -> T:
        if self._obj is None:
            self._obj = self._factory()
        return self._obj

    def close(self) -> None:
        if self._obj is not None and hasattr(self._obj, "close"):
            self._obj.close()
        self._obj = None

    def __enter__(self) -> "Lazy[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
