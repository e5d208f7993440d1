"""The training loop: DeepSpeed engine, stop/skip decisions agreed by all ranks, checkpoints.

Works as a single process (no launcher: we set up a one-rank process group), under
``deepspeed --num_gpus N`` and under ``torchrun``. Without GPUs it uses DeepSpeed's CPU
accelerator over gloo.

Per micro-batch the ranks exchange one small vector (loss and metrics, a non-finite flag and a
stop flag) so that every rank skips the same non-finite steps and stops at the same step when one
of them got SIGTERM/SIGINT: DeepSpeed deadlocks when ranks disagree.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .dsconfig import engine_dtype_name, read_ds_config, resolve_ds_config
from .errors import TrainError
from .logs import RunLogger
from .preflight import TrainOptions, plan as make_plan


@dataclass
class RunResult:
    """What a finished (or stopped) run reports back."""

    step: int
    stopped_by: str  # "max_steps", "signal" or "nonfinite"
    checkpoint: Path | None
    seconds: float
    step_seconds: float | None  # mean wall time per optimiser step after the first


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between micro-batches."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.signal = signum


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Join (or, without a launcher, create) the process group; returns (rank, local rank, world)."""
    import deepspeed

    # Skip the 40-60 s JIT build of the shared-memory allreduce op on CPU machines.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if "WORLD_SIZE" not in os.environ:  # plain `python -m loci_fast.cli train`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # Ranks sharing a CPU each get their share of the cores; oversubscribed threads spin.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", 1)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(local, 1)))
    return dist.get_rank(), local_rank, dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Move a batch to the engine's device, floating tensors cast to the engine's dtype."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None)
        moved[key] = value
    return moved


def endless(stream) -> Any:
    """Batches of ``stream`` epoch after epoch (each ``iter()`` of a loader is one epoch)."""
    while True:
        empty = True
        for batch in stream:
            empty = False
            yield batch
        if empty:
            raise TrainError("the training data yielded no batch in a whole epoch; check that the "
                             "shards hold samples with objects (loci-fast data inspect)")


def train(options: TrainOptions) -> RunResult:
    """Check everything, then train until max_steps, a signal, or too many non-finite losses."""
    started = time.perf_counter()
    plan = make_plan(options)
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", 1))
    cfg, stage = plan.cfg, plan.stage
    ds_path = options.deepspeed or cfg["deepspeed"]
    ds_config, client_optimizer = resolve_ds_config(
        read_ds_config(ds_path), micro_batch=int(cfg["model"]["batch_size"]),
        grad_accum=int(cfg["model"]["gradient_accumulation_steps"]), world_size=world_size,
        mixed_precision=bool(cfg["model"]["mixed_precision"]),
        learning_rate=float(cfg["learning_rate"]), on_gpu=torch.cuda.is_available(),
        source=f"DeepSpeed config {ds_path}" if ds_path else "the default DeepSpeed config")

    # The config picks the kernel backend; an explicit LOCI_FAST_KERNELS in the environment wins.
    os.environ.setdefault("LOCI_FAST_KERNELS", str(cfg["kernels"]["backend"]))

    # Same weights on every rank before DeepSpeed broadcasts them anyway.
    seed_everything(plan.seed)
    model = stage.build_model(cfg)
    if options.init_from and plan.resume_from is not None:
        if int(os.environ.get("RANK", 0)) == 0:
            print("init-from: ignored, the weights come from the checkpoint being resumed", flush=True)
    elif options.init_from:
        from .handover import init_from

        report = init_from(model, stage, options.init_from)
        if int(os.environ.get("RANK", 0)) == 0:
            print("\n".join(report), flush=True)
    trainable = stage.trainable_parameters(model)
    if not trainable:
        raise TrainError(f"stage {stage.name} has no trainable parameters in this model")

    rank, local_rank, world_size = init_distributed()
    import deepspeed

    optimizer = None
    if client_optimizer:
        from .ranger import Ranger

        optimizer = Ranger(trainable, lr=float(cfg["learning_rate"]),
                           weight_decay=float(cfg["weight_decay"]))
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable,
                                           optimizer=optimizer, config=ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        engine_dtype_name(ds_config)]
    untouched = None
    if client_optimizer and dtype == torch.float32 and int(
            ds_config.get("zero_optimization", {}).get("stage", 0)) == 0:
        from .untouched import UntouchedGradients

        untouched = UntouchedGradients(trainable)

    num_workers = options.workers if options.workers is not None else int(cfg["num_workers"])
    stream = stage.batches(cfg, plan.shards, rank=rank, world_size=world_size, seed=plan.seed,
                           num_workers=num_workers)

    step = skipped_total = 0
    if plan.resume_from is not None:
        ckpt_dir, tag = plan.resume_from
        load_path, client = engine.load_checkpoint(str(ckpt_dir), tag=tag)
        if load_path is None:
            raise TrainError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
        if int(client["world_size"]) != world_size:
            # Every rank's data position and RNG state belong to that rank's share of the data.
            raise TrainError(f"checkpoint {ckpt_dir / tag} was written by {client['world_size']} "
                             f"ranks, this run has {world_size}; resume with the same number of "
                             f"ranks, or start a new run with --init-from {ckpt_dir / tag}")
        rank_state = torch.load(ckpt.rank_file(ckpt_dir / tag, rank), map_location="cpu",
                                weights_only=False)
        stream.load_state_dict(rank_state["data"])
        ckpt.set_rng_state(rank_state["rng"])
        step = int(client["step"])
        skipped_total = int(client.get("skipped_nonfinite", 0))
    else:
        seed_everything(plan.seed + 1000003 * rank)  # per-rank noise from here on

    samples_per_step = int(cfg["model"]["batch_size"]) * int(
        cfg["model"]["gradient_accumulation_steps"]) * world_size
    logger = RunLogger(plan.out, rank=rank, start_step=step, max_steps=options.max_steps,
                       samples_per_step=samples_per_step, progress=options.progress)
    if plan.resume_from is not None:
        logger.message(f"resumed from {plan.resume_from[0] / plan.resume_from[1]} at step {step}")
    logger.message(f"stage {stage.name}: {world_size} rank(s), {engine_dtype_name(ds_config)}, "
                   f"{sum(p.numel() for p in trainable):,} trainable parameters, "
                   f"{len(plan.shards)} shard(s), out {plan.out}")

    def save() -> Path:
        client = {"step": step, "stage": stage.name, "config": cfg.to_dict(),
                  "config_hash": cfg.hash(), "world_size": world_size, "seed": plan.seed,
                  "skipped_nonfinite": skipped_total}
        rank_state = {"rng": ckpt.rng_state(), "data": stream.state_dict(), "rank": rank}
        return ckpt.save(engine, plan.out, step, client, rank_state, rank=rank, keep=options.keep,
                         barrier=dist.barrier)

    stop = StopFlag()
    stop.install()
    keys = tuple(stage.metric_keys)
    sums = torch.zeros(1 + len(keys), dtype=torch.float64)
    micro = 0
    consecutive_bad = 0
    stopped_by, last_saved = "max_steps", None
    first_step_done = None
    batches = endless(stream)
    engine.train()
    try:
        while options.max_steps is None or step < options.max_steps:
            # torch's DataLoader draws a seed from the global RNG whenever an epoch starts; a
            # resumed run starts its epoch at another moment, so keep data loading off the RNG
            # stream the model's noise uses (else resume is not bitwise).
            with torch.random.fork_rng(devices=[]):
                batch = next(batches)
            batch = _to_device(batch, engine.device, dtype)
            out = stage.forward(engine, batch)
            local = [out.loss.detach().double().cpu().reshape(())]
            local += [out.metrics[k].detach().double().cpu().reshape(()) if k in out.metrics
                      else torch.zeros((), dtype=torch.float64) for k in keys]
            values = torch.stack(local)
            finite = bool(torch.isfinite(values[0]))
            shared = torch.cat([torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0),
                                torch.tensor([0.0 if finite else 1.0,
                                              1.0 if stop.signal is not None else 0.0],
                                             dtype=torch.float64)])
            dist.all_reduce(shared)
            any_bad, any_stop = shared[-2].item() > 0, shared[-1].item() > 0
            if any_bad:
                consecutive_bad += 1
                skipped_total += 1
                logger.message(f"step {step + 1}: non-finite loss, batch skipped "
                               f"({consecutive_bad} in a row, {skipped_total} in total)")
                if consecutive_bad >= options.max_nonfinite:
                    stopped_by = "nonfinite"
                    break
            else:
                consecutive_bad = 0
                boundary = engine.is_gradient_accumulation_boundary()
                engine.backward(out.loss)
                if boundary and untouched is not None:
                    untouched.drop_untouched()
                engine.step()
                sums += shared[:-2] / world_size
                micro += 1
                if boundary:
                    step += 1
                    if first_step_done is None:
                        first_step_done = (time.perf_counter(), step)
                    scalars = {"loss": (sums[0] / micro).item()}
                    scalars.update({k: (sums[i + 1] / micro).item() for i, k in enumerate(keys)})
                    scalars["skipped_nonfinite"] = skipped_total
                    logger.step(step, scalars)
                    if step % options.image_every == 0 and out.images:
                        logger.images(step, out.images)
                    sums.zero_()
                    micro = 0
                    if step % options.save_every == 0:
                        last_saved = save()
            if any_stop and micro == 0:
                stopped_by = "signal"
                break
        if last_saved is None or last_saved.name != ckpt.tag_for(step):
            last_saved = save()
    finally:
        stop.uninstall()
        logger.close()
        if untouched is not None:
            untouched.remove()
    elapsed = time.perf_counter() - started
    step_seconds = None
    if first_step_done is not None and step > first_step_done[1]:
        step_seconds = (time.perf_counter() - first_step_done[0]) / (step - first_step_done[1])
    if rank == 0:
        print(f"stopped at step {step} ({stopped_by}); checkpoint {last_saved}", flush=True)
    if stopped_by == "nonfinite":
        raise TrainError(f"{options.max_nonfinite} non-finite losses in a row, the last at step "
                         f"{step + 1}; saved checkpoint {last_saved}. Lower the learning rate or "
                         f"check the data, then continue with --resume auto")
    return RunResult(step, stopped_by, last_saved, elapsed, step_seconds)
