"""Read-only config nodes: attribute and item access over validated JSON data.

Model code written against upstream reads configs both as ``cfg.model.num_slots`` and as
``cfg["model"]["num_slots"]``; a ``ConfigNode`` is a ``Mapping`` that allows both. Nodes are
immutable so that ``hash()`` means something: derive a changed config with ``Config.replace``.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Iterator, Optional

from .errors import ConfigError, closest, join


class ConfigList(tuple):
    """An immutable list from the config; compares equal to a list or tuple with the same items."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = tuple.__hash__


def freeze(value: Any, path: str) -> Any:
    """Plain JSON data -> nodes, ConfigLists and scalars."""
    if isinstance(value, dict):
        return ConfigNode(value, path)
    if isinstance(value, (list, tuple)):
        return ConfigList(freeze(v, join(path, i)) for i, v in enumerate(value))
    return value


def thaw(value: Any) -> Any:
    """Nodes and ConfigLists -> plain dicts and lists (fresh copies)."""
    if isinstance(value, ConfigNode):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def canonical_json(data: Any) -> str:
    """Sorted keys, no whitespace, ASCII only, no NaN: the same bytes for the same config everywhere."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class ConfigNode(Mapping):
    """One section of a config: ``node.key``, ``node["key"]``, ``"key" in node``, ``node.get(key, d)``."""

    __slots__ = ("_data", "_key_path")

    def __init__(self, data: dict, key_path: str = "") -> None:
        object.__setattr__(self, "_key_path", key_path)
        object.__setattr__(self, "_data", {k: freeze(v, join(key_path, k)) for k, v in data.items()})

    # --- Mapping protocol -------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(self._missing(key)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # --- attribute access -------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Private names never come from the config (and copy/pickle probe them before __init__).
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(self._missing(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{join(self._key_path, name)}: configs are read-only; derive a changed one "
                             f"with cfg.replace({{{join(self._key_path, name)!r}: ...}})")

    __delattr__ = __setattr__  # type: ignore[assignment]

    def __dir__(self) -> list:
        return sorted(set(super().__dir__()) | set(self._data))

    def __reduce__(self) -> tuple:
        return (type(self)._rebuild, (thaw(self), self._key_path))

    @classmethod
    def _rebuild(cls, data: dict, key_path: str) -> "ConfigNode":
        return cls(data, key_path)

    def _missing(self, key: str) -> str:
        near = closest(str(key), self._data)
        hint = f"; did you mean {near!r}?" if near else ""
        return f"{join(self._key_path, key)}: no such key{hint}"

    # --- export -----------------------------------------------------------------------------
    @property
    def key_path(self) -> str:
        """Dotted path of this node from the root ('' for the root)."""
        return self._key_path

    def to_dict(self) -> dict:
        """A plain, mutable ``dict`` copy (JSON-serialisable): the input with every default filled in."""
        return thaw(self)

    def to_json(self, indent: Optional[int] = 2) -> str:
        """This node as JSON text (keys in schema order)."""
        return json.dumps(self.to_dict(), indent=indent)

    def hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of this node, defaults included.

        Stable across processes and Python versions; two configs that load to the same values hash
        the same however their files were formatted. Use ``cfg.model.hash()`` to compare architectures.
        """
        return hashlib.sha256(canonical_json(self.to_dict()).encode("ascii")).hexdigest()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({self._key_path or '<root>'}: {json.dumps(self.to_dict())})"


class Config(ConfigNode):
    """The root of a loaded config. ``source`` is the file it came from (None for a dict)."""

    __slots__ = ("_source",)

    def __init__(self, data: dict, source: Optional[str] = None) -> None:
        super().__init__(data, "")
        object.__setattr__(self, "_source", source)

    @property
    def source(self) -> Optional[str]:
        """The file this config was loaded from, or None."""
        return self._source

    def __reduce__(self) -> tuple:
        return (Config, (self.to_dict(), self._source))

    def replace(self, overrides: Mapping[str, Any]) -> "Config":
        """A new, re-validated config with dotted-key ``overrides`` applied (see ``load_config``)."""
        from .load import load_config  # load imports this module

        try:
            return load_config(self.to_dict(), overrides=overrides)
        except ConfigError as err:
            raise (err.with_source(self._source) if self._source else err) from None
