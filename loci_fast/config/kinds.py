"""Value kinds of the config schema: each checks one JSON value and returns it normalised.

A kind's ``check(value, path)`` returns plain Python data (dicts, lists, scalars) with defaults
filled in, or raises ``ConfigError`` naming ``path``. ``describe()`` gives the short type text used
in error messages and in the defaults table.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .errors import ConfigError, closest, join


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _show(value: Any) -> str:
    """A value as it looks in JSON (shortened), with its Python type for wrong-type messages."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class Kind:
    """Base class of value kinds."""

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def _wrong(self, value: Any, path: str) -> ConfigError:
        return ConfigError(path, f"expected {self.describe()}, got {_show(value)}")


class Int(Kind):
    """An integer (JSON number without fraction; booleans are refused), optionally bounded below."""

    def __init__(self, min: Optional[int] = None) -> None:
        self.min = min

    def check(self, value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong(value, path)
        if self.min is not None and value < self.min:
            raise self._wrong(value, path)
        return value

    def describe(self) -> str:
        return "an integer" + (f" >= {self.min}" if self.min is not None else "")


class Float(Kind):
    """A real number; JSON integers are accepted and stored as float so hashes do not depend on 1 vs 1.0."""

    def __init__(self, min: Optional[float] = None) -> None:
        self.min = min

    def check(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._wrong(value, path)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(path, f"expected a finite number, got {value}")
        if self.min is not None and value < self.min:
            raise self._wrong(value, path)
        return float(value)

    def describe(self) -> str:
        return "a number" + (f" >= {self.min:g}" if self.min is not None else "")


class Bool(Kind):
    """true or false (not 0/1: a number where a flag belongs is usually a misplaced value)."""

    def check(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self._wrong(value, path)
        return value

    def describe(self) -> str:
        return "true or false"


class Str(Kind):
    """A non-empty string."""

    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            raise self._wrong(value, path)
        return value

    def describe(self) -> str:
        return "a non-empty string"


class Choice(Kind):
    """One of a fixed set of strings; a near miss gets the closest option suggested."""

    def __init__(self, *options: str) -> None:
        self.options = options

    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise self._wrong(value, path)
        if value not in self.options:
            near = closest(value, self.options)
            hint = f"; did you mean {near!r}?" if near else ""
            raise ConfigError(path, f"{value!r} is not one of {', '.join(map(repr, self.options))}{hint}",
                              near)
        return value

    def describe(self) -> str:
        return "one of " + "|".join(self.options)


class IntList(Kind):
    """A list of integers, of a fixed length when ``length`` is given, each >= ``min``."""

    def __init__(self, length: Optional[int] = None, min: Optional[int] = None) -> None:
        self.length = length
        self.item = Int(min)

    def check(self, value: Any, path: str) -> list:
        if not isinstance(value, (list, tuple)) or (self.length is not None and len(value) != self.length):
            raise self._wrong(value, path)
        return [self.item.check(v, join(path, i)) for i, v in enumerate(value)]

    def describe(self) -> str:
        n = f"{self.length} " if self.length is not None else ""
        return f"a list of {n}integers" + (f" >= {self.item.min}" if self.item.min is not None else "")


class Nullable(Kind):
    """``kind`` or null."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind

    def check(self, value: Any, path: str) -> Any:
        if value is None:
            return None
        try:
            return self.kind.check(value, path)
        except ConfigError as err:
            if err.key_path == path and err.problem.startswith("expected "):
                raise self._wrong(value, path) from None  # say that null is allowed too
            raise

    def describe(self) -> str:
        return f"{self.kind.describe()} or null"


class MapOf(Kind):
    """A JSON object with string keys and values of one kind (e.g. the compat flags).

    ``known`` (called at check time, so the names can be declared where they are used) limits the
    keys; an unknown key is refused with the closest known one. ``what`` names a key in messages.
    """

    def __init__(self, value: Kind, known: Optional[Callable[[], Sequence[str]]] = None,
                 what: str = "key") -> None:
        self.value, self.known, self.what = value, known, what

    def check(self, value: Any, path: str) -> dict:
        if not isinstance(value, Mapping):
            raise self._wrong(value, path)
        names = None if self.known is None else sorted(self.known())
        out = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(join(path, k), "keys must be non-empty strings")
            if names is not None and k not in names:
                near = closest(k, names)
                hint = f"; did you mean {near!r}?" if near else ""
                raise ConfigError(join(path, k), f"unknown {self.what}{hint} (valid: {', '.join(names)})", near)
            out[k] = self.value.check(v, join(path, k))
        return out

    def describe(self) -> str:
        return f"an object mapping names to {self.value.describe()}"


class ListOf(Kind):
    """A list whose items all have one kind."""

    def __init__(self, item: Kind) -> None:
        self.item = item

    def check(self, value: Any, path: str) -> list:
        if not isinstance(value, (list, tuple)):
            raise self._wrong(value, path)
        return [self.item.check(v, join(path, i)) for i, v in enumerate(value)]

    def describe(self) -> str:
        return f"a list of {self.item.describe()}"


@dataclass(frozen=True)
class Field:
    """One key of a section: its kind, its default (``REQUIRED`` if it has none) and what it means."""

    kind: Kind
    default: Any = REQUIRED
    doc: str = ""


class Section(Kind):
    """A JSON object with a fixed set of keys. Unknown keys are refused, missing ones take their default.

    ``post(value, path)`` may run cross-key checks on the filled-in section. With ``shorthand`` set,
    a bare string stands for ``{shorthand: string}`` (``"kernels": "triton"``).
    """

    def __init__(self, fields: Dict[str, Field], doc: str = "",
                 post: Optional[Callable[[dict, str], None]] = None, shorthand: Optional[str] = None) -> None:
        self.fields = fields
        self.doc = doc
        self.post = post
        self.shorthand = shorthand

    def check(self, value: Any, path: str) -> dict:
        if self.shorthand is not None and isinstance(value, str):
            value = {self.shorthand: value}
        if not isinstance(value, Mapping):
            raise self._wrong(value, path)
        for key in value:
            if key not in self.fields:
                near = closest(str(key), self.fields)
                hint = f"; did you mean {near!r}?" if near else ""
                raise ConfigError(join(path, key), f"unknown key{hint} (valid keys here: "
                                  f"{', '.join(sorted(self.fields))})", near)
        out = {}
        for key, field in self.fields.items():
            sub = join(path, key)
            if key in value:
                out[key] = field.kind.check(value[key], sub)
            elif field.default is REQUIRED:
                where = f"the '{path}' section" if path else "the top level"
                what = f"{field.doc}, {field.kind.describe()}" if field.doc else field.kind.describe()
                raise ConfigError(sub, f"missing required key ({what}); add it to {where}")
            else:
                out[key] = field.kind.check(copy.deepcopy(field.default), sub)
        if self.post is not None:
            self.post(out, path)
        return out

    def describe(self) -> str:
        text = "an object" + (f" ({self.doc})" if self.doc else "")
        return text + (f" or a {self.shorthand} string" if self.shorthand else "")


def defaults_table(section: Section, path: str = "") -> Sequence[tuple]:
    """Rows (key path, type, default as JSON, meaning) for every leaf key under ``section``.

    List-of-section kinds are listed under ``path[]``; nested sections are expanded.
    """
    rows = []
    for key, field in section.fields.items():
        sub = join(path, key)
        kind = field.kind
        if isinstance(kind, Section):
            rows.extend(defaults_table(kind, sub))
            continue
        item = getattr(kind, "item", None)
        if isinstance(item, Section):
            rows.append((sub, kind.describe(), json.dumps(field.default), field.doc))
            rows.extend(defaults_table(item, sub + "[]"))
            continue
        default = "REQUIRED" if field.default is REQUIRED else json.dumps(field.default)
        rows.append((sub, kind.describe(), default, field.doc))
    return rows
