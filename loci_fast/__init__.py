"""loci-fast: fast training and evaluation of Loci-Segmented.

Kept free of heavy imports: subpackages load what they need.
"""
__version__ = "0.1.0"
