"""Name -> object registries. Config strings are looked up here, never passed to ``eval``.

Two registries exist:

* ``MODULES``: the layer types a model YAML may name (``Conv``, ``C3``, ``SPPF``, ``Detect``,
  ``nn.Upsample``, ...). Each entry is a :class:`LayerSpec` that says how the YAML row's
  arguments become constructor arguments and what the layer's output channels and stride are.
* ``BACKBONES``: backbone factories (``efficientformer_l1``, ...). A factory returns an
  ``nn.Module`` with ``forward(x) -> list[Tensor]`` and the declared attributes ``channels``
  and ``strides`` (see docs/architecture.md, "Contracts"). A registered name prefix stands for
  a family of names resolved on lookup: ``timm:<model name>`` (``models/timm_backbone.py``).
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

from efyolo.errors import EfyoloError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from names to objects that refuses duplicates and explains unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._prefixes: dict[str, tuple[Callable[[str], T], str]] = {}

    def add(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: ``@BACKBONES.register("efficientformer_l1")``."""

        def decorator(item: T) -> T:
            for name in names or (getattr(item, "__name__"),):
                self.add(name, item)
            return item

        return decorator

    def add_prefix(self, prefix: str, resolve: Callable[[str], T], description: str) -> None:
        """Names ``prefix + rest`` resolve to ``resolve(rest)`` (``"timm:"`` -> a timm factory);
        ``description`` is shown with the known names (``"timm:<model name> for any timm model"``)."""
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} is already registered")
        self._prefixes[prefix] = (resolve, description)

    def _prefix_of(self, name: object) -> str | None:
        if isinstance(name, str):
            for prefix in self._prefixes:
                if name.startswith(prefix):
                    return prefix
        return None

    def get(self, name: str) -> T:
        prefix = self._prefix_of(name)
        if prefix is not None:
            return self._prefixes[prefix][0](name[len(prefix) :])
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise EfyoloError(self.unknown_message(name)) from None

    def unknown_message(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name), self._items, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        families = "".join(f"; or {description}" for _, description in self._prefixes.values())
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items))}{families})"

    def __contains__(self, name: object) -> bool:
        """Registered names, and any name with a registered prefix (checked when it is built)."""
        return name in self._items or self._prefix_of(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)


BACKBONES: Registry[Callable[..., Any]] = Registry("backbone")
