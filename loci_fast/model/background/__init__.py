"""Loci-s's dynamic background module (reference §12) and its uncertainty estimator."""
from .module import BackgroundOutput, UncertaintyBackground
from .pretrainer import BackgroundPretrainer
from .uncertainty import UncertaintyEstimator

__all__ = ["UncertaintyBackground", "BackgroundOutput", "BackgroundPretrainer", "UncertaintyEstimator"]
