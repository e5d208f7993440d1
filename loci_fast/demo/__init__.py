"""``make demo``: synthetic data, the object stages, the background and a short Loci-s run, a report.

    python -m loci_fast.demo [--out out/demo] [--ranks 2] [--scale 1.0] [--fresh]

1. ``loci-fast data synth`` writes small PyBullet scenes as shards: videos of one large object for
   the object stages and the background, and a smaller set of multi-object videos for ``loci``.
2. mask, depth and rgb decoders, then encoder-decoder stage 1 (``--init-from`` the three decoder
   runs) and stage 2 (``--init-from`` stage 1), the background module, and the whole Loci-s model
   (``--init-from`` stage 2 and the background), each through the ``deepspeed`` launcher
   (:mod:`.stages`).
3. Each stage's final weights are evaluated on held-out data (:mod:`.evaluate`, :mod:`.loci`), and
   ``<out>/REPORT.md`` gets the loss curves, reconstructions, slot masks and held-out numbers
   (:mod:`.report`).

Every step resumes: a killed demo continues where it stopped (``--resume auto``; finished stages
and existing data are kept). ``--fresh`` starts over.
"""
from __future__ import annotations

DESCRIPTION = __doc__.splitlines()[0]

from .evaluate import evaluate, evaluate_background  # noqa: E402
from .loci import evaluate_loci  # noqa: E402
from .report import plot_losses, write_report  # noqa: E402
from .stages import DATA, LOCI_DATA, STAGES, DemoStage, step_time  # noqa: E402

__all__ = ["DATA", "DESCRIPTION", "LOCI_DATA", "STAGES", "DemoStage", "evaluate", "evaluate_background",
           "evaluate_loci", "plot_losses", "step_time", "write_report"]
