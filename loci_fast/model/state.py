"""The explicit per-sequence state of Loci-s (reference §14, §17.5): what one frame's step hands the next.

Upstream keeps this in module buffers and in LociModule's ``output_last``; here it is one object,
created at a sequence start by :func:`initial_slot_state`, passed into each step and returned by it,
so the trainer can detach it at truncation points and checkpoint and restore it (tensors only:
:meth:`SlotState.state_dict` suits safetensors).

Note that the predictor updates the eligibility traces *in place*: a state returned by
:meth:`SlotState.detach` shares them with the original. Use :meth:`SlotState.clone` for a snapshot
that later steps leave untouched.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from loci_fast.blocks.gate_l0rd import EpropTraces

#: The optional tensors, all None at a sequence start: the slot latents after the last step and the
#: outputs of its decode (upstream's ``output_last``), the previous frame's background, and the
#: running visibility of ObjectDiscovery (upstream's ``last_mask``).
OPTIONAL_FIELDS = (
    "position",  # (B, O*4)
    "gestalt",  # (B, O*(3G+1))
    "priority",  # (B, O)
    "mask",  # (B, O+1, H, W), background last
    "mask_raw",  # (B, O, H, W)
    "occlusion",  # (B, O)
    "rgb",  # (B, 3*(O+1), H, W), background last
    "depth_raw",  # (B, O, H, W)
    "output_depth",  # (B, 1, H, W), the composited depth
    "bg_rgb",  # (B, 3, H, W)
    "bg_depth",  # (B, 1, H, W)
    "visibility",  # (B, O)
)
TRACES_PREFIX = "traces."


@dataclass
class SlotState:
    """Recurrent state of Loci-s between frames; see ``OPTIONAL_FIELDS`` for the optional tensors."""

    predictor_hidden: torch.Tensor  # (B*O, C*heads), threaded through all predictor cells
    traces: tuple[EpropTraces, ...]  # one per predictor cell, updated in place by the predictor
    position: torch.Tensor | None = None
    gestalt: torch.Tensor | None = None
    priority: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    mask_raw: torch.Tensor | None = None
    occlusion: torch.Tensor | None = None
    rgb: torch.Tensor | None = None
    depth_raw: torch.Tensor | None = None
    output_depth: torch.Tensor | None = None
    bg_rgb: torch.Tensor | None = None
    bg_depth: torch.Tensor | None = None
    visibility: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # for a caller's own per-sequence tensors

    @property
    def at_sequence_start(self) -> bool:
        """True until a step has stored slot latents."""
        return self.position is None

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "SlotState":
        optional = {name: None if getattr(self, name) is None else fn(getattr(self, name)) for name in OPTIONAL_FIELDS}
        return SlotState(predictor_hidden=fn(self.predictor_hidden),
                         traces=tuple(EpropTraces(*(fn(t) for t in tr)) for tr in self.traces),
                         extra={k: fn(v) for k, v in self.extra.items()}, **optional)

    def detach(self) -> "SlotState":
        """The same values cut from the autograd graph (a truncated-BPTT boundary); shares memory."""
        return self._map(torch.Tensor.detach)

    def clone(self) -> "SlotState":
        """A detached deep copy."""
        return self._map(lambda t: t.detach().clone())

    def to(self, device=None, dtype: torch.dtype | None = None) -> "SlotState":
        """Every tensor moved to ``device`` and, for floating-point tensors, cast to ``dtype``."""
        return self._map(lambda t: t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point()
                                        else None))

    def replace(self, **changes) -> "SlotState":
        """A copy with the given fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{name: tensor}`` of the non-None tensors, each detached, contiguous and owning its memory
        (safetensors refuses tensors that share storage): ``predictor_hidden``, ``traces.<cell>.<gx|gh|...>``,
        the optional fields by name, ``extra.<key>``."""
        out = {"predictor_hidden": self.predictor_hidden}
        for k, tr in enumerate(self.traces):
            out.update({f"{TRACES_PREFIX}{k}.{name}": t for name, t in zip(EpropTraces._fields, tr)})
        out.update({name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None})
        out.update({f"extra.{k}": v for k, v in self.extra.items()})
        return {k: _owned(v) for k, v in out.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor]) -> "SlotState":
        """Inverse of :meth:`state_dict`. Raises ValueError naming a missing or unknown key."""
        if "predictor_hidden" not in state:
            raise ValueError("slot state: key 'predictor_hidden' is missing; was this written by "
                             "SlotState.state_dict()?")
        cells: dict[int, dict[str, torch.Tensor]] = {}
        optional, extra = {}, {}
        for key, value in state.items():
            if key == "predictor_hidden":
                continue
            if key.startswith(TRACES_PREFIX):
                cell, _, name = key[len(TRACES_PREFIX):].partition(".")
                if not cell.isdigit() or name not in EpropTraces._fields:
                    raise ValueError(f"slot state: bad trace key {key!r}, expected "
                                     f"traces.<cell>.<{'|'.join(EpropTraces._fields)}>")
                cells.setdefault(int(cell), {})[name] = value
            elif key.startswith("extra."):
                extra[key[len("extra."):]] = value
            elif key in OPTIONAL_FIELDS:
                optional[key] = value
            else:
                raise ValueError(f"slot state: unknown key {key!r}; valid: predictor_hidden, traces.<cell>.<name>, "
                                 f"extra.<name>, {', '.join(OPTIONAL_FIELDS)}")
        if sorted(cells) != list(range(len(cells))):
            raise ValueError(f"slot state: trace cells {sorted(cells)} are not numbered 0..{len(cells) - 1}")
        traces = []
        for k in range(len(cells)):
            missing = [n for n in EpropTraces._fields if n not in cells[k]]
            if missing:
                raise ValueError(f"slot state: traces.{k} lacks {', '.join(missing)}")
            traces.append(EpropTraces(**cells[k]))
        return cls(predictor_hidden=state["predictor_hidden"], traces=tuple(traces), extra=extra, **optional)


def _owned(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size() or t.storage_offset() != 0:
        t = t.clone()  # a view into a larger buffer (e.g. a slice of the predictor output)
    return t


def initial_slot_state(batch_size: int, num_slots: int, predictor_width: int, num_cells: int, *, device=None,
                       dtype: torch.dtype = torch.float32) -> SlotState:
    """The state at a sequence start: zero predictor hidden state and traces, everything else None.

    ``predictor_width`` is C*heads and ``num_cells`` the predictor's GateL0RD count (layers + 1);
    ``LatentPredictor.width`` and ``.num_cells`` give both.
    """
    n = batch_size * num_slots
    return SlotState(
        predictor_hidden=torch.zeros(n, predictor_width, device=device, dtype=dtype),
        traces=tuple(EpropTraces.zeros(n, predictor_width, predictor_width, device=device, dtype=dtype)
                     for _ in range(num_cells)))
