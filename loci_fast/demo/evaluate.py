"""The object stages' and the background's final weights on held-out data: losses and image grids."""
from __future__ import annotations

from pathlib import Path

from .stages import DemoStage


def evaluate(stage: DemoStage, out: Path, val: str, batches: int = 2) -> None:
    """Final weights on held-out val crops (``loci_fast.eval.pretraining``): the model's loss terms and
    mean IoU, the position error and on-object share, and a reconstruction grid."""
    from PIL import Image

    from loci_fast.config import load_config
    from loci_fast.eval.pretraining import PretrainerEvaluator, batch_values
    from loci_fast.eval.weights import load_weights
    from loci_fast.train.logs import image_grid

    weights = load_weights(out / stage.name)
    evaluator = PretrainerEvaluator(load_config(weights.config), weights.state, stage.name)
    # Crops drawn as in training (around the object, random scale), from videos never trained on.
    stream = evaluator.batches(val, batch_size=16, seed=7)
    sums: dict[str, float] = {}
    for index in range(batches):
        result = evaluator.evaluate(next(stream), index)
        for key, value in batch_values(result).items():
            sums[key] = sums.get(key, 0.0) + value
        if index == 0:
            stage.rows = list(result.images)
            grid = image_grid(result.images, max_items=8)
            Image.fromarray(grid).save(out / "report" / f"reconstruction-{stage.name}.png")
    stage.eval = {k: v / max(batches, 1) for k, v in sums.items()}


def evaluate_background(stage: DemoStage, out: Path, val: str, batches: int = 2) -> None:
    """The background's final weights on held-out frame pairs: its loss terms (warm-ups as at the
    last training step) and the source/target/uncertainty/reconstruction grid."""
    import torch
    from PIL import Image

    from loci_fast.config import load_config
    from loci_fast.data.loaders import frame_pairs
    from loci_fast.eval.weights import load_weights
    from loci_fast.model.background import BackgroundPretrainer
    from loci_fast.train.logs import image_grid
    from loci_fast.train.stages import get_stage

    weights = load_weights(out / stage.name)
    cfg = load_config(weights.config)
    model = BackgroundPretrainer.from_config(cfg["model"])
    model.load_state_dict(weights.state)
    model.eval()
    model.global_steps = stage.steps
    trainer_stage = get_stage("background")
    size = tuple(int(s) for s in cfg["model"]["input_size"])
    stream = iter(frame_pairs(val, batch_size=8, size=size, seed=7, rank=0, world_size=1, training=True))
    sums: dict[str, float] = {}
    torch.manual_seed(0)  # a reproducible report
    with torch.no_grad():
        for index in range(batches):
            result = trainer_stage.forward(model, next(stream))
            for key, value in {"loss": result.loss, **result.metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            if index == 0:
                stage.rows = list(result.images)
                Image.fromarray(image_grid(result.images, max_items=8)).save(
                    out / "report" / f"reconstruction-{stage.name}.png")
    stage.eval = {k: v / max(batches, 1) for k, v in sums.items()}
