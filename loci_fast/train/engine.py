"""The training loop, top to bottom: plan, build the run, resume, loop over micro-steps, save.

Works as a single process (no launcher: we set up a one-rank process group), under
``deepspeed --num_gpus N`` and under ``torchrun``. Without GPUs it uses DeepSpeed's CPU
accelerator over gloo.

Ranks agree twice per micro-batch (``agree``): before the forward on whether every rank has a
batch and whether a stop was requested, after it on whether every loss is finite; the optimiser
step itself is guarded against non-finite gradients (``guard``). So every rank skips the same
steps and stops at the same step: DeepSpeed deadlocks when ranks disagree.
"""
from __future__ import annotations

import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from . import checkpoint as ckpt
from . import rank_state
from .dsconfig import engine_dtype_name
from .errors import TrainError
from .guard import GradientGuard, all_finite, optimizer_tensors
from .lock import RunLock
from .logs import RunLogger
from .preflight import Plan, TrainOptions, plan as make_plan
from .signals import StopFlag


@dataclass
class RunResult:
    """What a finished (or stopped) run reports back."""

    step: int
    stopped_by: str  # "max_steps", "signal", "nonfinite" or "nothing_to_do"
    checkpoint: Path | None
    seconds: float
    step_seconds: float | None  # mean wall time per optimiser step after the first


@dataclass
class Snapshot:
    """The loop's own state at a point where no gradient accumulation is pending: what a
    checkpoint stores besides DeepSpeed's weights and optimiser."""

    step: int
    skipped: int
    data: dict[str, Any]
    rng: tuple[dict[str, torch.Tensor], dict[str, Any]]
    state: Any


@dataclass
class Run:
    """Everything the loop works on."""

    plan: Plan
    rank: int
    world_size: int
    engine: Any
    dtype: torch.dtype
    stream: Any
    logger: RunLogger
    guard: GradientGuard
    lock: RunLock
    untouched: Any = None
    step: int = 0
    skipped: int = 0  # non-finite batches and steps skipped so far (all runs of this folder)
    state: Any = None  # the recurrent stage's state (None: fresh sequence or stateless stage)
    last_saved: Path | None = None
    dirty: bool = False  # progress since the last save
    notes: list[str] = field(default_factory=list)

    def snapshot(self) -> Snapshot:
        return Snapshot(self.step, self.skipped, self.stream.state_dict(), rank_state.rng_state(),
                        self.state)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launcher_world_size() -> int:
    """The number of ranks the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def init_distributed() -> tuple[int, int, int]:
    """Join (or, without a launcher, create) the process group; returns (rank, local rank, world)."""
    import deepspeed
    import torch.distributed as dist

    # Skip the 40-60 s JIT build of the shared-memory allreduce op on CPU machines.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if "WORLD_SIZE" not in os.environ:  # plain `python -m loci_fast.cli train`
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
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


def comm_device() -> torch.device:
    """Where small collective tensors live: NCCL reduces CUDA tensors only."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
        else torch.device("cpu")


def agree(*flags: bool) -> list[bool]:
    """For each flag, whether any rank set it (collective: every rank calls with as many flags)."""
    import torch.distributed as dist

    vector = torch.tensor([1.0 if f else 0.0 for f in flags], dtype=torch.float64,
                          device=comm_device())
    dist.all_reduce(vector, op=dist.ReduceOp.MAX)
    return [v > 0 for v in vector.tolist()]


def _to_device(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Move a batch to the engine's device, floating tensors cast to the engine's dtype."""
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, dtype=dtype if value.is_floating_point() else None)
        moved[key] = value
    return moved


def endless(stream) -> Iterator[dict[str, Any]]:
    """Batches of ``stream`` epoch after epoch (each ``iter()`` of a loader is one epoch)."""
    while True:
        empty = True
        for batch in stream:
            empty = False
            yield batch
        if empty:
            raise TrainError("the training data yielded no batch in a whole epoch; check that the "
                             "shards hold samples with objects (loci-fast data inspect)")


def kernel_summary() -> str:
    """Which kernel backend the model's ops use, and why."""
    from loci_fast.kernels import backend_summary

    return backend_summary()


# ---------------------------------------------------------------------------------------------
# Building the run


def take_lock(out: Path, rank: int) -> RunLock:
    """Rank 0 locks the run folder; every rank fails the same way when it cannot."""
    lock = RunLock(out)
    problem = None
    if rank == 0:
        try:
            lock.acquire()
        except TrainError as err:
            problem = str(err)
    if agree(problem is not None)[0]:
        raise TrainError(problem or f"rank 0 could not lock {out}; see its message")
    return lock


def build_model(plan: Plan, rank: int) -> tuple[torch.nn.Module, list[torch.nn.Parameter]]:
    """The stage's model, initialised (same seed on every rank) and from --init-from."""
    options, stage = plan.options, plan.stage
    seed_everything(plan.seed)
    model = stage.build_model(plan.cfg)
    if options.init_from and plan.resume_from is not None:
        if rank == 0:
            print("init-from: ignored, the weights come from the checkpoint being resumed",
                  flush=True)
    elif options.init_from:
        from .handover import init_from

        report = init_from(model, stage, options.init_from)
        if rank == 0:
            print("\n".join(report), flush=True)
    trainable = stage.trainable_parameters(model)
    if not trainable:
        raise TrainError(f"stage {stage.name} has no trainable parameters in this model")
    return model, trainable


def build_engine(plan: Plan, model, trainable) -> tuple[Any, torch.dtype, Any]:
    """(DeepSpeed engine, its dtype, the untouched-gradient tracker or None)."""
    import deepspeed

    cfg, ds_config = plan.cfg, plan.ds_config
    optimizer = None
    if plan.client_optimizer:
        init_from = [] if plan.resume_from is not None else list(plan.options.init_from)
        optimizer = plan.stage.build_optimizer(model, trainable, cfg, ds_config, init_from=init_from)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=trainable,
                                           optimizer=optimizer, config=ds_config)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        engine_dtype_name(ds_config)]
    untouched = None
    if plan.client_optimizer and dtype == torch.float32 and int(
            ds_config.get("zero_optimization", {}).get("stage", 0)) == 0:
        from .untouched import UntouchedGradients

        untouched = UntouchedGradients(trainable)
    return engine, dtype, untouched


def build_run(plan: Plan, rank: int, world_size: int) -> Run:
    """Lock the folder, build model, engine, data stream and logger."""
    lock = take_lock(plan.out, rank)
    try:
        model, trainable = build_model(plan, rank)
        engine, dtype, untouched = build_engine(plan, model, trainable)
        cfg = plan.cfg
        stream = plan.stage.batches(cfg, plan.shards, rank=rank, world_size=world_size,
                                    seed=plan.seed, num_workers=plan.num_workers)
        samples_per_step = int(cfg["model"]["batch_size"]) * int(
            cfg["model"]["gradient_accumulation_steps"]) * world_size
        logger = RunLogger(plan.out, rank=rank, start_step=plan.resumed_step,
                           max_steps=plan.options.max_steps, samples_per_step=samples_per_step,
                           progress=plan.options.progress,
                           constants={"kernels": plan.fingerprint["kernel_backend"]})
    except BaseException:
        lock.release()
        raise
    run = Run(plan, rank, world_size, engine, dtype, stream, logger, GradientGuard(engine), lock,
              untouched)
    if lock.notice:
        logger.message(lock.notice)
    for notice in plan.notices:
        logger.message(notice)
    logger.message(f"stage {plan.stage.name}: {world_size} rank(s), {engine_dtype_name(plan.ds_config)}"
                   f", {sum(p.numel() for p in trainable):,} trainable parameters, "
                   f"{len(plan.shards)} shard(s), out {plan.out}")
    logger.message(f"kernels: {kernel_summary()}")
    return run


# ---------------------------------------------------------------------------------------------
# Resume and save


def resume(run: Run) -> None:
    """Load the checkpoint chosen in preflight (weights, optimiser, data position, RNGs, state)."""
    plan = run.plan
    if plan.resume_from is None:
        seed_everything(plan.seed + 1000003 * run.rank)  # per-rank noise from here on
        return
    ckpt_dir, tag = plan.resume_from
    load_path, _ = run.engine.load_checkpoint(str(ckpt_dir), tag=tag)
    if load_path is None:
        raise TrainError(f"DeepSpeed could not load checkpoint {ckpt_dir / tag}")
    meta, rng, state = rank_state.read(ckpt.rank_file(ckpt_dir / tag, run.rank))
    run.stream.load_state_dict(meta["data"])
    rank_state.set_rng_state(rng, meta["rng"])
    run.state = plan.stage.state_from_tensors(state, run.engine.device) if state else None
    client = ckpt.client_state(ckpt_dir / tag)
    run.step, run.skipped = int(client["step"]), int(client.get("skipped_nonfinite", 0))
    run.last_saved = ckpt_dir / tag
    run.logger.message(f"resumed from {ckpt_dir / tag} at step {run.step}")


def _write_own_files(run: Run, snap: Snapshot, tag_dir: Path) -> None:
    """This rank's files of a checkpoint; rank 0 also the fp32 weights and client.json."""
    import json

    from safetensors.torch import save_file

    state = run.plan.stage.state_tensors(snap.state) if snap.state is not None else {}
    rank_state.write(ckpt.rank_file(tag_dir, run.rank), rank=run.rank, data=snap.data,
                     state=state, rng=snap.rng)
    if run.rank != 0:
        return
    weights = {k: v.detach().float().cpu().clone().contiguous() if v.is_floating_point()
               else v.detach().cpu().clone().contiguous()
               for k, v in run.engine.module.state_dict().items()}
    save_file(weights, str(tag_dir / ckpt.WEIGHTS), metadata={"format": "loci-fast"})
    plan, cfg = run.plan, run.plan.cfg
    client = {"step": snap.step, "stage": plan.stage.name, "config": cfg.to_dict(),
              "config_hash": cfg.hash(), "world_size": run.world_size, "seed": plan.seed,
              "skipped_nonfinite": snap.skipped, "fingerprint": plan.fingerprint}
    (tag_dir / ckpt.CLIENT).write_text(json.dumps(client, indent=1))


def save(run: Run, snap: Snapshot | None = None) -> Path:
    """Save a checkpoint of ``snap`` (default: now) on every rank; refuse non-finite state."""
    import torch.distributed as dist

    snap = snap or run.snapshot()
    tensors = [p for p in run.engine.module.parameters()] + optimizer_tensors(run.engine)
    if not all_finite(tensors, run.engine.device):
        raise TrainError(f"the weights or optimiser state hold non-finite values at step "
                         f"{snap.step}; nothing was saved. The last good checkpoint is "
                         f"{run.last_saved}: continue from it with --resume auto and a lower "
                         f"learning rate")
    path = ckpt.save(run.engine, run.plan.out, snap.step,
                     write_own=lambda tag_dir: _write_own_files(run, snap, tag_dir),
                     rank=run.rank, keep=run.plan.options.keep, barrier=dist.barrier)
    run.last_saved, run.dirty = path, False
    return path


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class Sums:
    """Loss and metrics summed over the micro-batches of one optimiser step (mean over ranks)."""

    keys: tuple[str, ...]
    values: torch.Tensor = field(init=False)
    micro: int = 0

    def __post_init__(self) -> None:
        self.values = torch.zeros(1 + len(self.keys), dtype=torch.float64)

    def reset(self) -> None:
        self.values.zero_()
        self.micro = 0

    def means(self) -> dict[str, float]:
        scalars = {"loss": (self.values[0] / self.micro).item()}
        scalars.update({k: (self.values[i + 1] / self.micro).item() for i, k in enumerate(self.keys)})
        return scalars


def _loss_vector(out, keys: tuple[str, ...]) -> torch.Tensor:
    local = [out.loss.detach().double().cpu().reshape(())]
    local += [out.metrics[k].detach().double().cpu().reshape(()) if k in out.metrics
              else torch.zeros((), dtype=torch.float64) for k in keys]
    return torch.stack(local)


def _reduce_losses(values: torch.Tensor, world_size: int) -> tuple[torch.Tensor, bool]:
    """(mean over ranks of the loss vector, whether any rank's loss was non-finite)."""
    import torch.distributed as dist

    finite = bool(torch.isfinite(values[0]))
    shared = torch.cat([torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0),
                        torch.tensor([0.0 if finite else 1.0], dtype=torch.float64)])
    shared = shared.to(comm_device())
    dist.all_reduce(shared)
    shared = shared.cpu()
    return shared[:-1] / world_size, shared[-1].item() > 0


class Loop:
    """One run's loop state: counters between micro-steps, and what happens at each."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.options = run.plan.options
        self.sums = Sums(tuple(run.plan.stage.metric_keys))
        self.consecutive_bad = 0
        self.first_step: tuple[float, int] | None = None

    def bad(self, what: str) -> bool:
        """Count a skipped batch or step; True when the run must stop."""
        run = self.run
        self.consecutive_bad += 1
        run.skipped += 1
        run.dirty = True
        run.logger.message(f"step {run.step + 1}: {what} ({self.consecutive_bad} in a row, "
                           f"{run.skipped} in total)")
        return self.consecutive_bad >= self.options.max_nonfinite

    def state_for(self, batch: dict[str, Any]) -> Any:
        run, stage = self.run, self.run.plan.stage
        if run.state is None or stage.starts_sequence(batch):
            return stage.initial_state(run.engine.module, batch)
        return run.state

    def micro_step(self, batch: dict[str, Any]) -> str | None:
        """Forward, agreement, backward and (at a boundary) the optimiser step of one batch.
        Returns "nonfinite" when the run must stop, else None."""
        run, stage = self.run, self.run.plan.stage
        batch = _to_device(batch, run.engine.device, run.dtype)
        out = stage.forward(run.engine, batch, self.state_for(batch))
        values, any_bad = _reduce_losses(_loss_vector(out, self.sums.keys), run.world_size)
        if any_bad:
            run.state = None  # the sequence's state may be poisoned: the next batch starts afresh
            return "nonfinite" if self.bad("non-finite loss, batch skipped") else None
        boundary = run.engine.is_gradient_accumulation_boundary()
        run.engine.backward(out.loss)
        if boundary and run.untouched is not None:
            run.untouched.drop_untouched()
        run.engine.step()
        run.state = stage.detach_state(out.state)
        run.dirty = True
        self.sums.values += values
        self.sums.micro += 1
        if not boundary:
            return None
        # Our guard skips non-finite gradients; ZeRO's and the fp16 optimiser's own overflow checks
        # skip theirs before our guard is reached.
        if run.guard.skipped or not run.engine.was_step_applied():
            self.sums.reset()
            return "nonfinite" if self.bad("non-finite gradient, optimiser step skipped") else None
        self.finish_step(out)
        return None

    def finish_step(self, out) -> None:
        """Book-keeping after an optimiser step: counters, logs, images, periodic checkpoint."""
        run = self.run
        self.consecutive_bad = 0
        run.step += 1
        if self.first_step is None:
            self.first_step = (time.perf_counter(), run.step)
        scalars = self.sums.means()
        scalars["skipped_nonfinite"] = run.skipped
        run.logger.step(run.step, scalars)
        if run.step % self.options.image_every == 0 and out.images:
            run.logger.images(run.step, out.images)
        self.sums.reset()
        if run.step % self.options.save_every == 0:
            save(run)

    def step_seconds(self) -> float | None:
        if self.first_step is None or self.run.step <= self.first_step[1]:
            return None
        return (time.perf_counter() - self.first_step[0]) / (self.run.step - self.first_step[1])


def _fetch(batches: Iterator[dict[str, Any]]) -> tuple[dict[str, Any] | None, Exception | None]:
    # torch's DataLoader draws a seed from the global RNG whenever an epoch starts; a resumed run
    # starts its epoch at another moment, so keep data loading off the RNG stream the model's noise
    # uses (else resume is not bitwise).
    try:
        with torch.random.fork_rng(devices=[]):
            return next(batches), None
    except TrainError:
        raise
    except Exception as err:  # a dead worker, a bad shard: stop cleanly, saving first
        return None, err


def loop(run: Run) -> tuple[str, Exception | None, Loop]:
    """Train until max_steps, a stop request, a data failure or too many non-finite steps.

    Returns (why it stopped, this rank's data error if any, the loop). Saves before returning.
    """
    options = run.plan.options
    progress = Loop(run)
    stop = StopFlag()
    stop.install()
    batches = endless(run.stream)
    run.engine.train()
    stopped_by, error, snap = "max_steps", None, None
    try:
        while options.max_steps is None or run.step < options.max_steps:
            if progress.sums.micro == 0:
                snap = run.snapshot()  # what a stop before the next step saves
            batch, error = _fetch(batches)
            missing, stopping = agree(batch is None, stop.requested)
            if missing or (stopping and progress.sums.micro == 0):
                stopped_by = "signal" if stopping and not missing else "data"
                if stopping and error is not None:
                    stopped_by = "signal"  # a worker died with the group: not a data problem
                break
            outcome = progress.micro_step(batch)
            snap = None  # the batch is consumed: a save from here stores the state as it is
            if outcome == "nonfinite":
                stopped_by = "nonfinite"
                break
        if run.dirty:
            save(run, snap)
    finally:
        stop.uninstall()
    return stopped_by, error, progress


def _report(run: Run, stopped_by: str, error: Exception | None) -> None:
    """Say how the run ended; raise TrainError for the endings a user must act on."""
    where = f"checkpoint {run.last_saved}"
    if run.rank == 0:
        print(f"stopped at step {run.step} ({stopped_by}); {where}", flush=True)
    if stopped_by == "nonfinite":
        raise TrainError(f"{run.plan.options.max_nonfinite} non-finite steps in a row, the last at "
                         f"step {run.step + 1}; saved the last good state (step {run.step}) as "
                         f"{where}. Lower the learning rate or check the data, then continue with "
                         f"--resume auto")
    if stopped_by == "data":
        cause = f"this rank's data loader failed: {error}" if error else \
            "another rank's data loader failed (see its message)"
        raise TrainError(f"{cause}; saved {where} (step {run.step}); fix the data, then continue "
                         f"with --resume auto")


def train(options: TrainOptions) -> RunResult:
    """Check everything, then train until max_steps, a signal, or too many non-finite steps."""
    started = time.perf_counter()
    plan = make_plan(options, world_size=launcher_world_size())
    # The config picks the kernel backend; an explicit LOCI_FAST_KERNELS in the environment wins.
    os.environ.setdefault("LOCI_FAST_KERNELS", plan.fingerprint["kernel_backend"])
    rank, _, world_size = init_distributed()
    if plan.done is not None:
        if rank == 0:
            print(plan.done, flush=True)
        return RunResult(plan.resumed_step, "nothing_to_do", None, 0.0, None)
    run = build_run(plan, rank, world_size)
    try:
        resume(run)
        stopped_by, error, progress = loop(run)
    finally:
        run.logger.close()
        run.guard.remove()
        if run.untouched is not None:
            run.untouched.remove()
        run.lock.release()
    _report(run, stopped_by, error)
    return RunResult(run.step, stopped_by, run.last_saved, time.perf_counter() - started,
                     progress.step_seconds())
