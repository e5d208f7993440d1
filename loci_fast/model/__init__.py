"""Loci-Segmented modules built on loci_fast.kernels."""
