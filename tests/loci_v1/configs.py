"""Tiny original-Loci model configs for CPU tests (upstream's schema, small sizes)."""
import copy

TINY = {
    "level": 1, "batch_size": 2, "num_objects": 3, "img_channels": 3, "input_size": [32, 48],
    "latent_size": [2, 3], "gestalt_size": 8, "object_regularizer": 1, "position_regularizer": 1,
    "supervision_factor": 0.01, "time_regularizer": 1,
    "encoder": {"channels": 24, "level1_channels": 12, "num_layers": 2, "reg_lambda": 1e-10},
    "predictor": {"heads": 2, "layers": 2, "channels_multiplier": 2, "reg_lambda": 1e-10},
    "decoder": {"channels": 24, "level1_channels": 3, "num_layers": 3},
    "background": {"learning_rate": 1e-4, "num_layers": 1, "reg_lambda": 1e-10, "latent_channels": 48,
                   "level1_channels": 24, "gestalt_size": 8, "use": False},
}


def tiny(level: int = 1, **changes) -> dict:
    """A copy of TINY at ``level`` with top-level model keys changed."""
    cfg = copy.deepcopy(TINY)
    cfg["level"] = level
    cfg.update(changes)
    return cfg


def frame_size(cfg: dict) -> tuple[int, int]:
    f = 4 ** (2 - cfg["level"])
    return cfg["input_size"][0] // f, cfg["input_size"][1] // f
