"""Named registries: one pattern for every configurable thing with a name (models, losses, regularisers,
optimisers), a decorator keyed by name in the manner of timm's ``register_model``::

    MODELS = Registry("model", key="model.name")

    @MODELS.register("attnmel", task="classification")
    def attnmel(cfg, num_classes): ...

    MODELS.get("attnmel")            # the registered object
    MODELS.names(task="segmentation")  # names whose tags match

A name registered twice is a programming error (``ValueError``); an unknown name is the user's
(:class:`~attnmel.errors.AttnMelError` naming the config key and listing the known names).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from attnmel.errors import AttnMelError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects (classes or factories) by name, each with optional tags (e.g. ``task="segmentation"``)."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind  # what a name names, for messages: "model", "loss", ...
        self.key = key  # the config key that holds the name, for messages: "model.name", ...
        self._items: dict[str, T] = {}
        self._tags: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **tags: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with ``tags``; returns it unchanged."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            self._tags[name] = dict(tags)
            return obj

        return add

    def get(self, name: str | None, **tags: Any) -> T:
        """The object registered as ``name``; unknown (or, with ``tags``, not matching them): AttnMelError."""
        known = ", ".join(self.names(**tags))
        if name in self._items:
            if self._matches(name, tags):
                return self._items[name]
            qualifier = " ".join(str(v) for v in tags.values())
            raise AttnMelError(f"{self.key} '{name}' is not a {qualifier} {self.kind}; known: {known}")
        raise AttnMelError(f"unknown {self.key} '{name}'; known: {known}")

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's or plugin's temporary entry); unknown names are ignored."""
        self._items.pop(name, None)
        self._tags.pop(name, None)

    def tags(self, name: str) -> dict[str, Any]:
        """The tags ``name`` was registered with (unknown name: AttnMelError)."""
        self.get(name)
        return dict(self._tags[name])

    def names(self, **tags: Any) -> tuple[str, ...]:
        """Registered names in registration order, those whose tags equal ``tags`` when given."""
        return tuple(n for n in self._items if self._matches(n, tags))

    def _matches(self, name: str, tags: dict[str, Any]) -> bool:
        return all(self._tags[name].get(k) == v for k, v in tags.items())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
