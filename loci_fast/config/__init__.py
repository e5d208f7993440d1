"""Typed configs for loci-fast: upstream Loci-Segmented JSON plus our own keys.

    from loci_fast.config import load_config
    cfg = load_config("configs/pretrain-mask-decoder.json", overrides={"model.batch_size": 4})
    cfg.model.encoder.channels == cfg["model"]["encoder"]["channels"]

Every key, type and default is in ``schema.py`` (print them with ``describe_defaults()``).
"""
from .errors import ConfigError
from .load import describe_defaults, load_config, parse_overrides, strip_json_comments
from .node import Config, ConfigList, ConfigNode, canonical_json
from .schema import CONFIG, KERNEL_BACKENDS

__all__ = ["Config", "ConfigError", "ConfigList", "ConfigNode", "CONFIG", "KERNEL_BACKENDS",
           "canonical_json", "describe_defaults", "load_config", "parse_overrides",
           "strip_json_comments"]
