"""CATER (reference loci.md §6.1, §6.3): the authors' preprocessed release -> loci-video shards, the
label tracks derived from its scene metadata, and load-time decoding as upstream does (BGR)."""
