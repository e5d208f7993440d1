"""DeepSpeed training of the object stages: ``loci-fast train`` / ``loci-fast export``.

Modules: ``engine`` (the loop), ``preflight`` (checks before training), ``dsconfig`` (DeepSpeed
config vs training config), ``stage``/``stages`` (stage interface and the five object stages),
``ranger`` (the optimiser), ``checkpoint`` (save/resume), ``handover`` (``--init-from``),
``logs`` (progress, metrics.jsonl, TensorBoard, PNG grids), ``export``, ``command`` (CLI).
Nothing heavy is imported here.
"""
