"""Loci-s's dynamic background module (reference §12) and its uncertainty estimator."""
from .module import BackgroundOutput, UncertaintyBackground
from .uncertainty import UncertaintyEstimator

__all__ = ["UncertaintyBackground", "BackgroundOutput", "UncertaintyEstimator"]
