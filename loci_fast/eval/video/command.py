"""The ``loci`` entry of ``loci-fast eval``'s ``EVALUATORS``: the command-line flags to :func:`evaluate_loaded`."""
from __future__ import annotations

import argparse
from typing import Any


def evaluate_loci(args: argparse.Namespace, weights, cfg, stage: str) -> dict[str, Any]:
    """Run the Loci-s evaluation the flags describe; ``summary`` is the upstream table's numbers in one line."""
    from . import evaluate_loaded

    given = str(args.config) if args.config else None
    result = evaluate_loaded(weights, cfg, args.data, args.out, modes=args.modes, seeds=args.seeds,
                             batch_size=args.batch_size, videos=args.videos, device=args.device, dtype=args.dtype,
                             progress=not args.no_progress, fresh=args.fresh, config_source=given)
    from ..movi import cell

    result["summary"] = "; ".join(f"{r['mode']} {r['dataset']}: IoU {cell(r['iou'])}, ARI {cell(r['ari'])}"
                                  for r in result["rows"])
    return result
