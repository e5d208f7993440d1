"""The original Loci ("Learning What and Where", upstream CognitiveModeling/Loci f5a7023; reference loci.md).

One module per concept: ``geometry`` (Gaussian maps, occlusion by priority), ``residual`` (skip and
residual blocks), ``initial_states`` (slot seeding), ``encoder``, ``predictor`` (GateL0RD transformer),
``tracker`` (snitch head, CATER camera), ``decoder``, ``background``, ``regularizers``, ``state``
(the explicit per-sequence state), ``noise`` (the injectable random draws), ``loci`` (the per-frame
step) and ``upstream`` (checkpoint conversion). Nothing here imports the Loci-s model
(``loci_fast.model``).
"""
from .loci import LociV1, StepOutput
from .noise import StepNoise
from .state import LociV1State

__all__ = ["LociV1", "LociV1State", "StepNoise", "StepOutput"]
