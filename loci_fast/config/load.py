"""Reading configs: JSON (with upstream's // and /* */ comments), overrides, legacy detection."""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Iterable, Mapping, Optional, Union

from .errors import ConfigError
from .kinds import defaults_table
from .node import Config
from .schema import CONFIG
from .schema_v1 import CONFIG_V1, is_loci_v1

PathLike = Union[str, "os.PathLike[str]"]

# Keys that only the pre-Loci-Segmented code base used (upstream model/syn-sim*.json, §21.2).
_LEGACY_MODEL_KEYS = ("level", "num_objects", "crop_size", "latent_size", "vae_factor", "img_channels")
_LEGACY_TOP_KEYS = ("datatype", "dataset", "closed_loop", "scheduled_sampling", "use_cosine_annealing")


def strip_json_comments(text: str) -> str:
    """Remove // line and /* block */ comments outside strings (upstream reads configs through jsmin)."""
    out, i, n = [], 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
            out.append(c)
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            if j < 0:
                raise ValueError("unterminated /* comment")
            out.append(" ")
            i = j + 2
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def read_json(path: PathLike) -> dict:
    """Parse a JSON config file (comments allowed). Duplicate keys are refused, as they hide edits."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    duplicates: list = []

    def pairs_to_dict(pairs: list) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    source = os.fspath(path)
    try:
        data = json.loads(strip_json_comments(text), object_pairs_hook=pairs_to_dict)
    except json.JSONDecodeError as err:
        raise ConfigError("", f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
                          source=source) from None
    except ValueError as err:
        raise ConfigError("", f"not valid JSON: {err}", source=source) from None
    if isinstance(data, dict):
        try:
            _check_legacy(data)  # an old-schema file gets that explanation, not a duplicate-key one
        except ConfigError as err:
            raise err.with_source(source) from None
    if duplicates:
        raise ConfigError(duplicates[0], "appears twice in the same JSON object (the parser keeps the "
                          "last silently); keep one", source=source)
    return data


def _check_legacy(data: Mapping) -> None:
    if is_loci_v1(data):  # the original Loci's CATER configs have their own schema (schema_v1.py)
        return
    model = data.get("model")
    legacy = [k for k in _LEGACY_TOP_KEYS if k in data]
    if isinstance(model, Mapping):
        legacy += [f"model.{k}" for k in _LEGACY_MODEL_KEYS if k in model]
    if legacy:
        raise ConfigError(
            "", "this config is from the older Loci code base (it has " + ", ".join(legacy) +
            ", and that schema lacks model.num_slots and model.gestalt_size); loci-fast reads the "
            "Loci-Segmented schema and the original Loci's CATER configs (datatype \"cater\", or "
            "\"kind\": \"loci-v1\"): start from configs/loci-s.json or configs/cater-stage1.json instead")


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set ``data[a][b][c] = value`` for ``dotted = "a.b.c"``; numeric parts index lists.

    Missing sections on the way are created empty, so the schema check names them if they are wrong.
    """
    parts = dotted.split(".")
    if any(p == "" for p in parts):
        raise ConfigError(dotted, "override keys are dotted key paths like 'model.batch_size'")
    node: Any = data
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = _index(node, part, here)
            if last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            node = node.setdefault(part, {})
        else:
            parent = ".".join(parts[:depth])
            raise ConfigError(parent, f"holds the {type(node).__name__} {node!r}, so '{dotted}' cannot be set")


def _index(items: list, part: str, path: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(path, f"expected a list index below {len(items)}, got {part!r}")
    return int(part)


def _plain(value: Any) -> Any:
    """Mappings -> dicts and sequences -> lists, recursively, copying everything."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def parse_overrides(items: Iterable[str]) -> dict:
    """``["model.batch_size=4", "data.train=shards/x-{000000..000003}.tar"]`` -> an overrides dict.

    The value is read as JSON when it parses (numbers, true/false, lists, objects), else as a string.
    """
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(key, f"override {item!r} needs the form key.path=value")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def load_config(source: Union[PathLike, Mapping[str, Any]],
                overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Load and validate a config from a JSON file or a dict, then apply dotted-key overrides.

    ``overrides`` maps dotted key paths to values, e.g. ``{"model.batch_size": 4,
    "data.train": "shards/movi-a-{000000..000007}.tar", "data.train.0.weight": 2.0}``; they are
    applied before validation, so they are checked like the file. Raises ``ConfigError`` (a
    ``ValueError``) naming the file, the key path and the closest valid key.
    """
    origin: Optional[str] = None
    if isinstance(source, Mapping):
        data = _plain(source)  # a fresh copy; also turns a loaded Config back into dicts and lists
    else:
        origin = os.fspath(source)
        data = read_json(origin)
    try:
        if not isinstance(data, dict):
            raise ConfigError("", f"the top level must be a JSON object, got {type(data).__name__}")
        _check_legacy(data)
        for key, value in (overrides or {}).items():
            _set_dotted(data, key, copy.deepcopy(value))
        checked = (CONFIG_V1 if is_loci_v1(data) else CONFIG).check(data, "")
    except ConfigError as err:
        raise (err.with_source(origin) if origin else err) from None
    return Config(checked, origin)


def describe_defaults() -> str:
    """The defaults table: every key path, its type, its default (REQUIRED if none) and its meaning."""
    rows = defaults_table(CONFIG)
    kw = max(len(r[0]) for r in rows)
    dw = min(24, max(len(r[2]) for r in rows))
    lines = [f"{'key':<{kw}}  {'default':<{dw}}  type; meaning"]
    for key, kind, default, doc in rows:
        lines.append(f"{key:<{kw}}  {default:<{dw}}  {kind}; {doc}")
    return "\n".join(lines)


__all__ = ["load_config", "parse_overrides", "describe_defaults", "read_json", "strip_json_comments"]
