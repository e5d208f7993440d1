"""The demo's stages, data and launches: what runs, in which order, from which weights.

Each stage is ``deepspeed --num_gpus N --module loci_fast.cli train ...`` with its config in
``configs/demo/``; GPUs when there are enough, else the CPU with gloo. Every launch resumes
(``--resume auto``), finished stages and existing data are kept, and the seconds each part took are
summed over resumed invocations in ``<out>/timings.json``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class DemoStage:
    name: str
    config: str
    steps: int
    init_from: tuple[str, ...] = ()
    kind: str = "object"  # "object" (LociPretrainer on crops), "background" (frame pairs), "loci" (videos)
    seconds: float = 0.0
    step_seconds: float | None = None
    eval: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)

    @property
    def data(self) -> str:
        """The shard split it trains on (and is evaluated on, with ``val`` for ``train``)."""
        return "loci-train" if self.kind == "loci" else "train"


STAGES = (
    DemoStage("mask", "pretrain-mask-decoder.json", 400),
    DemoStage("depth", "pretrain-depth-decoder.json", 300),
    DemoStage("rgb", "pretrain-rgb-decoder.json", 300),
    DemoStage("stage1", "pretrain-encoder-decoder-stage1.json", 1200, ("mask", "depth", "rgb")),
    DemoStage("stage2", "pretrain-encoder-decoder-stage2.json", 450, ("stage1",)),
    DemoStage("background", "pretrain-background.json", 200, kind="background"),
    DemoStage("loci", "loci-s.json", 100, ("stage2", "background"), kind="loci"),
)
# The object stages: one large object per video. Stage 1's encoder sees no mask, only a pixel-sized
# Gaussian dot at a random pixel of the object (upstream's initial position, std -1 -> min_std), and
# learning where the object is takes it thousands of steps; stage 2 then decodes at that learnt
# position. With several or small objects (synth's default 0.4-1 m, ~10 px in a 128-px frame) the
# position does not converge within a demo budget and stage 2 decodes beside the objects. A 64-px
# model input learns no faster per step (the position error in crop pixels halves, in crop
# fractions it grows).
DATA = dict(train_videos=120, val_videos=8, frames=8, size=128, objects=(1, 1), object_size=(1.2, 1.8),
            shard_videos=40)
# The loci stage: the whole model tracks several objects through a video, so it gets its own small
# multi-object set at the model's 64x64 input (two shards: one per rank).
LOCI_DATA = dict(train_videos=64, val_videos=8, frames=8, size=64, objects=(2, 3), object_size=(0.8, 1.4),
                 shard_videos=32)
DATASETS = {"train": DATA, "loci-train": LOCI_DATA}


def _bin(name: str) -> str:
    """A console script of this interpreter's environment (the .venv make created)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def _run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` from the repository root, teeing its output to ``log``; fail loudly."""
    started = time.perf_counter()
    print("$ " + " ".join(cmd), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            fh.write(line)
            if "[INFO]" not in line and "[WARNING]" not in line:
                sys.stdout.write(line)
                sys.stdout.flush()
        if proc.wait() != 0:
            raise SystemExit(f"demo: command failed (exit {proc.returncode}); log: {log}")
    return time.perf_counter() - started


def make_data(out: Path, workers: int, spec: dict = DATA, prefix: str = "") -> tuple[str, str]:
    """Synthesise the ``<prefix>train`` and ``<prefix>val`` shards of ``spec`` once; returns their glob patterns."""
    data = out / "data"
    for split, videos, seed in (("train", spec["train_videos"], 1), ("val", spec["val_videos"], 2)):
        split = prefix + split
        done = data / f".{split}.done"
        if done.exists():
            continue
        for old in data.glob(f"{split}-*.tar"):
            old.unlink()
        _run([_bin("loci-fast"), "data", "synth", "--out", str(data), "--videos", str(videos),
              "--frames", str(spec["frames"]), "--size", str(spec["size"]), "--seed", str(seed),
              "--objects", *(str(n) for n in spec["objects"]),
              "--object-size", *(str(s) for s in spec["object_size"]),
              "--split", split, "--shard-videos", str(spec["shard_videos"]),
              "--workers", str(workers), "--no-progress"], out / "demo.log")
        done.write_text("ok\n")
    return str(data / f"{prefix}train-*.tar"), str(data / f"{prefix}val-*.tar")


def launcher(ranks: int) -> tuple[list[str], str]:
    """The deepspeed launcher prefix for ``ranks`` processes, and the device they use."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus >= 1:
        n = min(ranks, gpus)
        return [_bin("deepspeed"), "--num_gpus", str(n), "--module", "loci_fast.cli"], f"{n} GPU rank(s)"
    return ([_bin("deepspeed"), "--num_gpus", str(ranks), "--module", "loci_fast.cli"],
            f"{ranks} CPU ranks (gloo)")


def finished_step(run: Path) -> int:
    from loci_fast.train import checkpoint as ckpt

    tag = ckpt.latest_tag(run / ckpt.CHECKPOINT_DIR)
    return ckpt.parse_tag(tag)[0] if tag else 0


def train_stage(stage: DemoStage, out: Path, train: str, prefix: list[str], scale: float) -> None:
    run = out / stage.name
    steps = max(2, int(round(stage.steps * scale)))
    stage.steps = steps
    if finished_step(run) >= steps:
        print(f"demo: stage {stage.name} already trained ({steps} steps), kept", flush=True)
        return
    cmd = prefix + ["train", "--config", str(REPO / "configs" / "demo" / stage.config),
                    "--data", train, "--out", str(run), "--max-steps", str(steps),
                    "--save-every", str(max(1, steps // 3)), "--image-every", str(max(1, steps // 6)),
                    "--resume", "auto", "--workers", "0"]
    if stage.init_from:
        cmd += ["--init-from"] + [str(out / name) for name in stage.init_from]
    stage.seconds = _run(cmd, out / "demo.log")


def step_time(run: Path) -> float | None:
    """Median wall seconds per optimiser step from metrics.jsonl (skips the first steps)."""
    from loci_fast.train.logs import read_metrics

    records = read_metrics(run / "metrics.jsonl")
    times = [b["time"] - a["time"] for a, b in zip(records[5:], records[6:]) if b["step"] == a["step"] + 1]
    if not times:
        return None
    times.sort()
    return times[len(times) // 2]


def _timings(out: Path) -> dict[str, float]:
    """Seconds spent per part of the demo (data, each stage), summed over resumed invocations."""
    path = out / "timings.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _add_seconds(out: Path, key: str, seconds: float) -> float:
    """Add ``seconds`` to ``key`` in ``<out>/timings.json``; return the new total for ``key``."""
    timings = _timings(out)
    timings[key] = timings.get(key, 0.0) + seconds
    (out / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")
    return timings[key]


