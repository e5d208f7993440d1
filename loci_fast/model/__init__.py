"""Loci-Segmented modules built on loci_fast.kernels.

The main classes import lazily (``from loci_fast.model import LociPretrainer``) so that importing
the package, e.g. for the command line, stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "LociPretrainer": ".pretrainer",
    "LociEncoder": ".encoder",
    "LociDecoder": ".decoder",
    "convert_state_dict": ".upstream",
    "COMPAT_FLAGS": ".compat",
    "resolve_compat": ".compat",
}

__all__ = list(_LAZY)

if TYPE_CHECKING:  # pragma: no cover  (for type checkers; at run time __getattr__ imports)
    from .compat import COMPAT_FLAGS, resolve_compat  # noqa: F401
    from .decoder import LociDecoder  # noqa: F401
    from .encoder import LociEncoder  # noqa: F401
    from .pretrainer import LociPretrainer  # noqa: F401
    from .upstream import convert_state_dict  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
