"""Record the random draws upstream makes (torch.normal, randn_like, rand_like, multinomial), in order,
so a parity test can inject the same values into our modules (reference §14.1)."""
import contextlib

import torch

DRAWS = ("normal", "randn_like", "rand_like", "multinomial")


@contextlib.contextmanager
def record_draws(*names: str):
    """Patch the named torch functions (default: all of DRAWS) to log ``(name, result)`` while active."""
    names = names or DRAWS
    log: list[tuple[str, torch.Tensor]] = []
    originals = {n: getattr(torch, n) for n in names}

    def wrap(name, fn):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            log.append((name, out.detach().clone()))
            return out
        return recorded

    for n, fn in originals.items():
        setattr(torch, n, wrap(n, fn))
    try:
        yield log
    finally:
        for n, fn in originals.items():
            setattr(torch, n, fn)


def take(log: list, name: str) -> torch.Tensor:
    """Pop the first recorded draw, checking it is of the expected kind (draw order is part of parity)."""
    assert log, f"expected a recorded {name} draw, none left"
    kind, value = log.pop(0)
    assert kind == name, f"expected a {name} draw next, upstream made a {kind} draw"
    return value


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (0 when both are 0)."""
    scale = ref.abs().max().item()
    diff = (a.double() - ref.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


@contextlib.contextmanager
def replay_draws(log: list):
    """Patch the torch draw functions to return upstream's recorded values, in order; each call must be
    of the recorded kind and shape (so the draw order is checked too). Everything must be used up."""
    originals = {n: getattr(torch, n) for n in DRAWS}

    def make(name):
        def replayed(*args, **kwargs):
            assert log, f"our code made an extra {name} draw (upstream made no more draws)"
            kind, value = log.pop(0)
            assert kind == name, f"our code made a {name} draw where upstream made a {kind} draw"
            if name in ("randn_like", "rand_like"):
                assert tuple(args[0].shape) == tuple(value.shape), f"{name}: shape {tuple(args[0].shape)}, " \
                                                                   f"upstream {tuple(value.shape)}"
                return value.to(dtype=args[0].dtype, device=args[0].device)
            return value.clone()
        return replayed

    for n in DRAWS:
        setattr(torch, n, make(n))
    try:
        yield log
    finally:
        for n, fn in originals.items():
            setattr(torch, n, fn)
    assert not log, f"upstream made draws our code did not: {[k for k, _ in log]}"
