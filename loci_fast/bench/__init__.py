"""Benchmark suite shared by `loci-fast bench`, `make bench` and the pytest-benchmark files in bench/."""
