"""Stages ``cater1`` .. ``cater4``: the original Loci trained online on CATER (reference loci.md §3.2-3.9).

One engine step is one iteration of upstream's loop (one frame, or one warm-up repeat of frame 0): one
forward, one backward, one step of :class:`~loci_fast.loci_v1.optimizers.LociV1Optimizer` (upstream's five
optimizers and their per-iteration schedule, handed to DeepSpeed as the client optimizer). Every iteration
truncates; the GateL0RD eligibility traces carry credit across frames. The state between iterations is a
:class:`~loci_fast.loci_v1.training.TrainState` (slots, hidden states and traces, the regularisers'
memories, the error map, the last target), detached by the engine and stored in every checkpoint, so a
run resumed mid-video continues exactly.

The four stages differ only in their configs (``configs/cater-stage{1..4}.json``: level, learning rates,
supervision factor); stage k+1 starts from stage k's export with ``--init-from`` (upstream's ``-load``, with
fresh optimizers as its ``load_optimizers`` false). Supported: fp32 with ZeRO stage 0 (the schedule skips
single parameters whose gradient is None, as upstream); bf16 and ZeRO 1/2 are refused (their flat fp32
partitions step every parameter of a group).
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import TrainError
from .base import Stage, StepOutput

ROWS = 4  # samples shown in the PNG grid


def _net(model):
    return getattr(model, "module", model)


def schedule_of(model) -> Any:
    """The LociV1Optimizer the stage built for ``model`` (kept on the model as ``training_schedule``)."""
    opt = getattr(_net(model), "training_schedule", None)
    if opt is None:
        raise TrainError("the cater stages step upstream's five optimizers: build the optimizer with "
                         "CaterStage.build_optimizer (loci-fast train does)")
    return opt


class CaterStage(Stage):
    """One CATER stage; ``level`` is the curriculum level its configs use (1: stages 1-2, 2: stages 3-4)."""

    def __init__(self, name: str, level: int) -> None:
        self.name, self.level = name, level

    @property
    def metric_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        from loci_fast.loci_v1.training import TERMS

        return TERMS

    def build_model(self, cfg) -> torch.nn.Module:
        from loci_fast.loci_v1 import LociV1

        try:
            kind = cfg["kind"]
        except KeyError:  # Loci-s configs have no kind
            kind = "loci-s"
        if kind != "loci-v1":
            raise TrainError(f"stage {self.name} trains the original Loci: give an original-Loci config "
                             f"(configs/cater-stage1.json), not a Loci-s one")
        m = cfg["model"]
        if int(m["level"]) != self.level:
            raise TrainError(f"stage {self.name} runs at model.level {self.level}, the config has {m['level']}; "
                             f"use configs/cater-stage{self.name[-1]}.json or --stage cater{1 if m['level'] == 1 else 3}")
        if int(m["gradient_accumulation_steps"]) != 1:
            raise TrainError("model.gradient_accumulation_steps must be 1 for the cater stages: every iteration is "
                             "one optimizer step in upstream's schedule")
        from loci_fast.loci_v1.training import TrainSettings

        model = LociV1.from_config(m, teacher_forcing=int(cfg["teacher_forcing"]))
        model.train_settings = TrainSettings.from_config(cfg)  # a plain attribute, read by forward
        return model

    def build_optimizer(self, model: torch.nn.Module, params: list[torch.nn.Parameter], cfg,
                        ds_config: dict[str, Any] | None = None,
                        init_from: list[str] | None = None) -> torch.optim.Optimizer:
        """Upstream's five optimizers; with ``load_optimizers`` true their states come from the
        ``<name>.optimizer.safetensors`` beside an --init-from file (what import-upstream writes)."""
        from loci_fast.loci_v1.compat import resolve_v1_compat
        from loci_fast.loci_v1.optimizers import LociV1Optimizer

        ds_config = ds_config or {}
        zero = int(ds_config.get("zero_optimization", {}).get("stage", 0))
        half = [n for n in ("bf16", "fp16") if ds_config.get(n, {}).get("enabled", False)]
        if zero or half:
            raise TrainError(f"stage {self.name} runs in fp32 with ZeRO stage 0 only (this DeepSpeed config has "
                             f"{half[0] if half else 'fp32'}, ZeRO {zero}): upstream's schedule skips parameters "
                             "without a gradient, which flat partitions cannot; use configs/deepspeed/fp32.json")
        chosen = {id(p) for p in params}
        opt = LociV1Optimizer.for_model(model, learning_rate=float(cfg["learning_rate"]),
                                        background_learning_rate=float(cfg["model"]["background"]["learning_rate"]),
                                        entity_pretraining_steps=int(cfg["entity_pretraining_steps"]),
                                        init_whole_sequence=not resolve_v1_compat(cfg["model"])[
                                            "init_first_iteration_gradient"],
                                        trainable=lambda p: id(p) in chosen)
        object.__setattr__(model, "training_schedule", opt)  # a plain attribute, not a submodule
        if cfg["load_optimizers"] and init_from:
            self._load_optimizer_states(opt, model, init_from)
        return opt

    @staticmethod
    def _load_optimizer_states(opt, model, init_from: list[str]) -> None:
        import os

        from safetensors.torch import load_file

        from loci_fast.loci_v1.optimizers import load_flat_state
        from loci_fast.loci_v1.upstream import optimizer_path

        files = [optimizer_path(str(p)) for p in init_from if str(p).endswith(".safetensors")]
        files = [f for f in files if os.path.isfile(f)]
        if not files:
            raise TrainError("load_optimizers is true but no --init-from file has optimizer states beside it "
                             "(NAME.optimizer.safetensors next to NAME.safetensors, written by "
                             "`loci-fast import-upstream --kind loci-v1`); convert the upstream net*.pt again "
                             "to a .safetensors file, or set load_optimizers false (upstream's stages all do)")
        for f in files:
            try:
                load_flat_state(opt, model, load_file(f))
            except ValueError as err:
                raise TrainError(f"{f}: {err}") from None

    def batches(self, cfg, shards: list[str], *, rank: int, world_size: int, seed: int, num_workers: int):
        from ..cater_stream import CaterIterations

        m = cfg["model"]
        f = 4 ** (2 - int(m["level"]))
        size = (int(m["input_size"][0]) // f, int(m["input_size"][1]) // f)
        return CaterIterations(shards, batch_size=int(m["batch_size"]), size=size,
                               sequence_len=int(cfg["sequence_len"]), teacher_forcing=int(cfg["teacher_forcing"]),
                               seed=seed, rank=rank, world_size=world_size)

    # recurrent state
    def starts_sequence(self, batch: dict[str, Any]) -> bool:
        return bool(batch["reset"])

    def initial_state(self, model: torch.nn.Module, batch: dict[str, Any]):
        from loci_fast.loci_v1.training import TrainState

        return TrainState()

    def detach_state(self, state):
        return None if state is None else state.detach()

    def state_tensors(self, state) -> dict[str, torch.Tensor]:
        return {} if state is None else state.state_dict()

    def state_from_tensors(self, tensors: dict[str, torch.Tensor], device: torch.device):
        from loci_fast.loci_v1.training import TrainState

        return TrainState.from_state_dict({k: v.to(device) for k, v in tensors.items()})

    def forward(self, model, batch: dict[str, Any], state: Any = None) -> StepOutput:
        from loci_fast.loci_v1.training import (TrainSettings, TrainState, background_iteration, iteration_target,
                                                train_iteration)

        net, opt = _net(model), schedule_of(model)
        settings = getattr(net, "train_settings", None) or TrainSettings()
        state = state if state is not None and not batch["reset"] else TrainState()
        t, first = int(batch["t"]), bool(batch["reset"])
        background_only = (opt.num_updates <= settings.background_pretraining_steps and net.init_status() < 0.001)
        opt.plan(first_of_sequence=first, background_only=background_only, last_of_sequence=bool(batch["last"]))
        if background_only:
            it = background_iteration(net, batch["frame"], batch["background"], batch["target"])
        else:
            target = iteration_target(batch["target"], state, first, t < 0, settings)
            it = train_iteration(net, batch["frame"], target, batch["target_xyz"], batch["background"], state,
                                 settings)
        images = self.images(batch, it) if it.output is not None else {}
        return StepOutput(it.loss, it.terms, images, it.state)

    @torch.no_grad()
    def images(self, batch: dict[str, Any], it) -> dict[str, torch.Tensor]:
        """Rows of the PNG grid (BGR flipped to RGB for viewing): input, target, prediction, slot masks."""
        from .proposal import palette

        n = slice(0, ROWS)
        rgb = lambda x: x[n].detach().float().clamp(0, 1).flip(1)  # noqa: E731
        masks = it.output.mask[n].detach().float()
        painted = torch.einsum("bnhw,nc->bchw", masks[:, :-1], palette(masks.shape[1] - 1).to(masks))
        return {"input": rgb(batch["frame"]), "target": rgb(it.state.target), "prediction": rgb(it.output.output),
                "slot masks": (0.4 * rgb(batch["frame"]) + 0.6 * painted).clamp(0, 1)}


    # ``loci-fast bench --train-step``: one frame, and one video chunk from a sequence start
    BENCH_MODES = {"frame": 1, "chunk": 8}

    def example_batch(self, cfg, device: torch.device, dtype: torch.dtype, seed: int = 0,
                      mode: str = "frame") -> dict[str, Any]:
        """Synthetic iterations of the config's size for ``bench --train-step``: a square moving over a smooth
        background, ``BENCH_MODES[mode]`` iterations per bench step (the chunk starts a sequence; a frame
        continues the state of the bench step before)."""
        gen = torch.Generator().manual_seed(seed)
        m = cfg["model"]
        f = 4 ** (2 - int(m["level"]))
        b, h, w = int(m["batch_size"]), int(m["input_size"][0]) // f, int(m["input_size"][1]) // f
        n = self.BENCH_MODES[mode]
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        bg = (0.3 + 0.4 * (0.5 * xx + 0.5 * yy))[None, None].expand(b, 3, h, w) * torch.rand(b, 3, 1, 1, generator=gen)
        frames = []
        for t in range(n + 1):
            fg = torch.zeros(1, 1, h, w)
            dx = t * max(w // 16, 1)
            fg[..., h // 4:h // 2, w // 4 + dx:w // 2 + dx] = 1
            frames.append((bg * (1 - fg) + 0.9 * fg).clamp(0, 1))
        xyz = torch.rand(b, 3, generator=gen) * 6 - 3
        its = [{"frame": frames[t], "target": frames[t + 1], "target_xyz": xyz, "background": bg[:, :, :, :],
                "t": t if mode == "frame" else t - 1, "reset": mode == "chunk" and t == 0,
                "last": mode == "chunk" and t == n - 1} for t in range(n)]
        its = [{k: v.to(device=device, dtype=dtype) if isinstance(v, torch.Tensor) else v for k, v in it.items()}
               for it in its]
        return {"iterations": its, "frames_per_step": n, "_state": {}}

    def bench_step(self, model, optimizer, batch: dict[str, Any]) -> torch.Tensor:
        """One bench step: every iteration of ``batch`` (forward, backward, the optimizers' step), the state
        carried; returns the mean loss."""
        state, total = batch["_state"].get("state"), 0.0
        for it in batch["iterations"]:
            out = self.forward(model, it, state)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            state, total = self.detach_state(out.state), total + out.loss.detach()
        batch["_state"]["state"] = state
        return total / len(batch["iterations"])


CATER1 = CaterStage("cater1", 1)
CATER2 = CaterStage("cater2", 1)
CATER3 = CaterStage("cater3", 2)
CATER4 = CaterStage("cater4", 2)
