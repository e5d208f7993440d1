"""Building blocks shared by Loci-s (loci_fast.model) and the original Loci (loci_fast.loci_v1)."""
