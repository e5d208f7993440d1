"""The one exception type of the config package, and the closest-key helper its messages use."""
from __future__ import annotations

import difflib
from typing import Iterable, Optional


class ConfigError(ValueError):
    """A config that does not fit the schema.

    ``key_path`` is the dotted path of the offending key (``model.encoder.chanels``; list entries
    appear as ``data.train.0.path``), ``suggestion`` the closest valid key when one is close enough.
    """

    def __init__(self, key_path: str, problem: str, suggestion: Optional[str] = None,
                 source: Optional[str] = None) -> None:
        self.key_path = key_path
        self.problem = problem
        self.suggestion = suggestion
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key_path or '<root>'}: {problem}")

    def with_source(self, source: str) -> "ConfigError":
        """The same error, its message prefixed with the file (or other origin) it came from."""
        return ConfigError(self.key_path, self.problem, self.suggestion, source)


def closest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate most similar to ``name`` (difflib ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


def join(path: str, key: object) -> str:
    """``path`` extended by one key or list index, dotted."""
    return f"{path}.{key}" if path else str(key)
