"""Shared pieces of the trainer tests: toy configs and shards, subprocess runs, metrics."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from loci_fast.train.logs import read_metrics

from .toy_stage import write_toy_shards

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOY = "tests.train.toy_stage:TOY"


def toy_setup(tmp: Path, batch_size: int = 4) -> tuple[Path, str]:
    """A toy training config and its shard pattern under ``tmp``."""
    cfg = tmp / "toy.json"
    cfg.write_text(json.dumps({"model_path": "toy", "model": {
        "batch_size": batch_size, "num_slots": 1, "gestalt_size": 64, "input_size": [64, 64]}}))
    return cfg, write_toy_shards(tmp / "shards")


def train_args(cfg: Path, shards: str, out: Path, *extra: str, stage: str | None = TOY) -> list[str]:
    """``loci-fast train`` arguments; ``stage=None`` lets the config decide the stage."""
    chosen = ["--stage", stage] if stage else []
    return ["train", "--config", str(cfg), *chosen, "--data", shards, "--out", str(out),
            "--no-progress", "--image-every", "1000", *extra]


def launcher(kind: str, nproc: int = 2) -> list[str]:
    """The command prefix that starts ``loci_fast.cli`` with ``nproc`` ranks."""
    if kind == "deepspeed":
        return [str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_port",
                str(_port()), "--module", "loci_fast.cli"]
    if kind == "torchrun":
        return [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), "--master_port",
                str(_port()), "-m", "loci_fast.cli"]
    return [sys.executable, "-m", "loci_fast.cli"]


def _port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("WORLD_SIZE", None)
    return e


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def start(cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, so a signal can reach every rank at once."""
    return subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 180) -> int:
    """Block until metrics.jsonl records ``step`` (or later); returns the last step seen."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}):\n{proc.stdout.read()}")
        if metrics.exists():
            records = read_metrics(metrics)
            if records and records[-1]["step"] >= step:
                return records[-1]["step"]
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)


def losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl")]


def synth_shards(tmp: Path, videos: int = 4) -> str:
    """Real shards from `loci-fast data synth` under ``tmp/data`` (64x64, 2-3 objects); their glob."""
    proc = run(launcher("python") + ["data", "synth", "--out", str(tmp / "data"), "--videos", str(videos),
                                     "--frames", "4", "--size", "64", "--objects", "2", "3",
                                     "--shard-videos", "1", "--workers", "1", "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(tmp / "data" / "train-*.tar")


def kill_mid_sequence_then_resume(cfg: Path, shards: str, out: Path, steps: tuple[str, ...], kill_at: int,
                                  sequence_steps: int, last: int) -> tuple[str, subprocess.CompletedProcess]:
    """A 2-rank deepspeed run saving every step, SIGKILLed to the whole group once it logged step
    ``kill_at``; then resumed (``--resume auto``) from its newest checkpoint in mid-sequence (a step not a
    multiple of ``sequence_steps``, before ``last``), later ones dropped. Returns (that tag, the resumed run)."""
    from loci_fast.train import checkpoint as ckpt

    proc = start(launcher("deepspeed") + train_args(cfg, shards, out, *steps, "--save-every", "1", stage=None))
    try:
        wait_for_step(proc, out / "metrics.jsonl", kill_at, timeout=600)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    tags = [t for t in ckpt.complete_tags(out / "checkpoints") if int(t[5:]) % sequence_steps]
    assert tags and int(tags[-1][5:]) < last, tags
    tag = tags[-1]
    for later in ckpt.complete_tags(out / "checkpoints"):
        if int(later[5:]) > int(tag[5:]):
            shutil.rmtree(out / "checkpoints" / later)
    (out / "checkpoints" / ckpt.LATEST).write_text(tag)
    resumed = run(launcher("deepspeed") + train_args(cfg, shards, out, *steps, "--save-every", "1", "--resume",
                                                     "auto", stage=None), timeout=900)
    return tag, resumed
