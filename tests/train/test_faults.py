"""Real 2-rank deepspeed launches with DataLoader workers, killed the way launchers and schedulers
kill: SIGTERM to the whole process group, SIGKILL at random moments (one in mid-save), and ranks
that disagree about a non-finite gradient. The real mask stage trains on `data synth` shards."""
import json
import random
import signal
import time

import pytest
import torch

from loci_fast.train import checkpoint as ckpt
from loci_fast.train import manifest
from loci_fast.train.logs import read_metrics

from .helpers import (REPO, env, kill_group, launcher, losses, run, start, synth_shards, toy_setup, train_args,
                      wait_for_step)

pytestmark = pytest.mark.slow
CONFIG = REPO / "configs" / "tiny" / "pretrain-mask-decoder.json"
STEPS = ["--max-steps", "14", "--save-every", "2", "--keep", "0", "--workers", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faults")
    return tmp, synth_shards(tmp)


@pytest.fixture(scope="module")
def uninterrupted(synth):
    tmp, shards = synth
    out = tmp / "uninterrupted"
    proc = run(launcher("deepspeed") + train_args(CONFIG, shards, out, *STEPS, stage=None), timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_sigterm_to_the_group_with_workers_writes_a_checkpoint(synth, uninterrupted):
    tmp, shards = synth
    out = tmp / "sigterm"
    proc = start(launcher("deepspeed") + train_args(CONFIG, shards, out, "--max-steps", "1000",
                                                    "--save-every", "1000", "--workers", "1", stage=None))
    try:
        wait_for_step(proc, out / "metrics.jsonl", 3)
        kill_group(proc, signal.SIGTERM)  # every rank and every DataLoader worker
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            kill_group(proc, signal.SIGKILL)
    last = losses(out)[-1][0]
    tag = ckpt.latest_tag(out / "checkpoints")
    assert f"stopped at step {last} (signal); checkpoint {out / 'checkpoints' / tag}" in output, output[-3000:]
    assert "DataLoader worker" not in output and tag == ckpt.tag_for(last)
    assert manifest.problem(out / "checkpoints" / tag) is None
    assert losses(out) == losses(uninterrupted)[:last]


def _complete(out):
    return set(ckpt.complete_tags(out / "checkpoints"))


def _saving(out):
    folder = out / "checkpoints"
    return folder.is_dir() and any(ckpt.parse_tag(p.name) and not ckpt.is_complete(p)
                                   for p in folder.iterdir() if p.is_dir())


def test_fault_injection_sigkill_at_random_moments(synth, uninterrupted, seed):
    """Five or more SIGKILLs of the whole group, one while a checkpoint is being written; each time
    `--resume auto`. The loss sequence equals the uninterrupted run's, bitwise, and no complete
    checkpoint is lost on the way."""
    tmp, shards = synth
    out = tmp / f"faults-{seed}"
    rng = random.Random(seed)
    slow = dict(env(), **{ckpt.SLOW_SAVE_ENV: "1.5"})
    kills, killed_in_save, complete = 0, False, set()
    for attempt in range(20):
        resume = ["--resume", "auto"] if attempt else []
        proc = start_with(launcher("deepspeed") + train_args(CONFIG, shards, out, *STEPS, *resume, stage=None), slow)
        done_before = len(read_metrics(out / "metrics.jsonl")) if (out / "metrics.jsonl").exists() else 0
        try:
            if not killed_in_save:
                killed_in_save = _wait(proc, lambda: _saving(out))
            elif kills < 5:
                _wait(proc, lambda n=done_before: (out / "metrics.jsonl").exists()
                      and len(read_metrics(out / "metrics.jsonl")) > n)
                time.sleep(rng.uniform(0.0, 2.0))
            else:
                output, _ = proc.communicate(timeout=400)
                assert proc.returncode == 0, output[-3000:]
                break
            if proc.poll() is None:
                kill_group(proc, signal.SIGKILL)
                kills += 1
            proc.wait()
        finally:
            if proc.poll() is None:
                kill_group(proc, signal.SIGKILL)
                proc.wait()
        now = _complete(out)
        assert complete <= now, f"complete checkpoints lost: {sorted(complete - now)}"
        assert all(manifest.problem(out / "checkpoints" / t) is None for t in now)
        complete = now
    assert kills >= 5 and killed_in_save
    assert losses(out) == losses(uninterrupted)


def start_with(cmd, environment):
    import subprocess

    return subprocess.Popen(cmd, cwd=REPO, env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _wait(proc, condition, timeout=300) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("zero", [0, 2])
def test_ranks_that_disagree_about_a_gradient_all_skip_the_step(tmp_path, zero):
    # Rank 1's batches 2 and 3 give the first weight an infinite gradient; under ZeRO 2 that
    # weight's partition lives on rank 0, so only rank 0's own check sees it.
    cfg, shards = toy_setup(tmp_path)
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": zero}}))
    out = tmp_path / "disagree"
    proc = run(launcher("deepspeed") + train_args(cfg, shards, out, "--max-steps", "4", "--save-every", "4",
                                                  "--deepspeed", str(ds),
                                                  stage="tests.train.toy_stage:TOY_INF_GRAD_RANK1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4]
    tag_dir = out / "checkpoints" / "step_00000004"
    weights, client = ckpt.module_weights(tag_dir)
    assert client["skipped_nonfinite"] == 2 and all(torch.isfinite(w).all() for w in weights.values())
    for path in sorted(tag_dir.glob("*optim_states.pt")) or [tag_dir / "mp_rank_00_model_states.pt"]:
        state = torch.load(path, map_location="cpu", weights_only=False)  # the test's own run
        assert _step_counts(state) == {4}, path.name


def _step_counts(obj) -> set[int]:
    """Every optimiser ``step`` counter in a (nested) checkpoint dict."""
    found = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "step" and isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool):
                found.add(int(value))
            else:
                found |= _step_counts(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            found |= _step_counts(value)
    return found
