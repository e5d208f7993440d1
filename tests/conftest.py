"""Shared test set-up: Triton's CPU interpreter when there is no GPU, the gpu marker, seeds."""
import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    # Must precede the first `import triton` anywhere in the test session.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request) -> int:
    """A seed distinct per test (and per parameter set); LOCI_FAST_TEST_SEED shifts them all."""
    base = int(os.environ.get("LOCI_FAST_TEST_SEED", "0"))
    return (zlib.crc32(request.node.nodeid.encode()) + base) % (2**31)


@pytest.fixture
def gen(seed) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
