"""The explicit per-sequence state of the original Loci (reference loci.md §2.11).

Upstream keeps it in module buffers (GateL0RD hidden states and eligibility traces, the slot
seeder's running mask maximum, the regularisers' memories and call counters, the object modulator's
memory) and in its training loop (the slot latents and masks). Here it is one object: a fresh one
(:func:`LociV1State.start`) is a sequence start (upstream's ``reset``); each step returns the next.

The GateL0RD traces are updated in place by the step: :meth:`LociV1State.clone` gives a snapshot that
later steps leave untouched, :meth:`LociV1State.detach` shares them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import torch

from loci_fast.blocks.gate_l0rd import EpropTraces

TENSOR_FIELDS = (
    "position",  # (B, O·3) slot positions (row, col, s) predicted for the next frame
    "gestalt",  # (B, O·G)
    "priority",  # (B, O)
    "mask",  # (B, O+1, H, W) predicted masks, background last
    "seed_mask",  # (B·O, 1) running max of each slot's mask (slot seeding; alive iff > threshold)
    "reg_mask_position",  # (B·O, 1) the position regulariser's "ever visible" memory
    "reg_mask_object",  # (B·O, 1, 1, 1) the object-permanence regulariser's memory
    "reg_mask_time",  # (B·O, 1, 1, 1) the temporal-consistency regulariser's memory
    "modulator_position",  # (B·O, 3) the object modulator's last-seen position
    "modulator_gestalt",  # (B·O, G) the object modulator's last-seen gestalt
)


@dataclass
class LociV1State:
    """Recurrent state between frames; the optional tensors are None at a sequence start."""

    hidden: tuple[torch.Tensor, ...]  # per GateL0RD layer, (B·O, Hd)
    traces: tuple[EpropTraces, ...]  # per GateL0RD layer, updated in place
    reg_calls: int = 0  # regulariser calls since the sequence start (they return 0 for the first teacher_forcing)
    position: torch.Tensor | None = None
    gestalt: torch.Tensor | None = None
    priority: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    seed_mask: torch.Tensor | None = None
    reg_mask_position: torch.Tensor | None = None
    reg_mask_object: torch.Tensor | None = None
    reg_mask_time: torch.Tensor | None = None
    modulator_position: torch.Tensor | None = None
    modulator_gestalt: torch.Tensor | None = None

    @classmethod
    def start(cls, cells, rows: int, *, device=None, dtype: torch.dtype = torch.float32) -> "LociV1State":
        """A sequence start for ``rows`` = B·O slot rows: zero hidden states and traces of each GateL0RD cell."""
        init = [cell.initial_state(rows, device=device, dtype=dtype) for cell in cells]
        return cls(hidden=tuple(h for h, _ in init), traces=tuple(t for _, t in init))

    @property
    def at_sequence_start(self) -> bool:
        """True until a step has stored slot latents."""
        return self.position is None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "LociV1State":
        opt = {n: None if getattr(self, n) is None else fn(getattr(self, n)) for n in TENSOR_FIELDS}
        return LociV1State(hidden=tuple(fn(h) for h in self.hidden),
                           traces=tuple(EpropTraces(*(fn(t) for t in tr)) for tr in self.traces),
                           reg_calls=self.reg_calls, **opt)

    def detach(self) -> "LociV1State":
        """The same values cut from the autograd graph (upstream's per-frame truncation); shares memory."""
        return self._map(torch.Tensor.detach)

    def clone(self) -> "LociV1State":
        """A detached deep copy."""
        return self._map(lambda t: t.detach().clone())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (safetensors-friendly): ``hidden.<i>``, ``traces.<i>.<name>``, the set optional
        fields, and ``reg_calls`` as a 0-dim int64 tensor."""
        out: dict[str, torch.Tensor] = {"reg_calls": torch.tensor(self.reg_calls, dtype=torch.int64)}
        for i, h in enumerate(self.hidden):
            out[f"hidden.{i}"] = h
        for i, tr in enumerate(self.traces):
            for name, t in zip(EpropTraces._fields, tr):
                out[f"traces.{i}.{name}"] = t
        for n in TENSOR_FIELDS:
            if getattr(self, n) is not None:
                out[n] = getattr(self, n)
        return out

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "LociV1State":
        """Inverse of :meth:`state_dict`; raises ValueError on unknown or missing keys."""
        layers = sorted({int(k.split(".")[1]) for k in sd if k.startswith("hidden.")})
        if layers != list(range(len(layers))):
            raise ValueError(f"LociV1State: hidden.<i> keys must be 0..n-1, found {layers}")
        known = {"reg_calls", *TENSOR_FIELDS, *(f"hidden.{i}" for i in layers),
                 *(f"traces.{i}.{n}" for i in layers for n in EpropTraces._fields)}
        unknown = sorted(set(sd) - known)
        missing = sorted(k for k in known - set(sd) if k.startswith(("hidden.", "traces.")) or k == "reg_calls")
        if unknown or missing:
            raise ValueError(f"LociV1State: unknown keys {unknown}, missing keys {missing}")
        traces = tuple(EpropTraces(*(sd[f"traces.{i}.{n}"] for n in EpropTraces._fields)) for i in layers)
        return cls(hidden=tuple(sd[f"hidden.{i}"] for i in layers), traces=traces,
                   reg_calls=int(sd["reg_calls"]), **{n: sd.get(n) for n in TENSOR_FIELDS})


assert {f.name for f in fields(LociV1State)} == {"hidden", "traces", "reg_calls", *TENSOR_FIELDS}
