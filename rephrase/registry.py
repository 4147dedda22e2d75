"""Named components chosen by config. An unknown name fails with the list of known ones."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name} is registered twice")
            self._factories[name] = factory
            return factory

        return add

    def names(self) -> list[str]:
        return sorted(self._factories)

    def check(self, name: str) -> None:
        """Fail on an unknown name, listing the known ones; configs call it while they load."""
        if name not in self._factories:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")

    def build(self, name: str, **params: Any) -> T:
        self.check(name)
        try:
            return self._factories[name](**params)
        except TypeError as e:
            raise ValueError(f"{self.kind} {name}: bad parameters {params}: {e}") from None
