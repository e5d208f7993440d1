"""Real multi-rank runs on the CPU: deepspeed launcher, torchrun, SIGKILL + resume, SIGTERM.

The launcher and resume tests train the real mask stage (LociPretrainer, tiny config) on shards
written by `loci-fast data synth`, so the data-stream position is part of what resume restores.
"""
import json
import random
import shutil
import signal

import pytest

from loci_fast.train import checkpoint as ckpt

from .helpers import REPO, kill_group, launcher, losses, run, start, synth_shards, toy_setup, train_args, wait_for_step

pytestmark = pytest.mark.slow
STEPS = ["--max-steps", "12", "--save-every", "3"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("launch")
    cfg, shards = toy_setup(tmp)
    return tmp, cfg, shards


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Real shards from `loci-fast data synth` and the tiny mask-decoder config."""
    tmp = tmp_path_factory.mktemp("synth")
    return tmp, REPO / "configs" / "tiny" / "pretrain-mask-decoder.json", synth_shards(tmp)


@pytest.fixture(scope="module")
def uninterrupted(synth):
    tmp, cfg, shards = synth
    out = tmp / "uninterrupted"
    proc = run(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, stage=None))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_deepspeed_launcher_two_ranks(uninterrupted):
    records = losses(uninterrupted)
    assert [s for s, _ in records] == list(range(1, 13))
    tag_dir = uninterrupted / "checkpoints" / "step_00000012"
    assert (uninterrupted / "checkpoints" / "latest").read_text() == "step_00000012"
    assert (tag_dir / ckpt.COMPLETE).exists()
    assert ckpt.rank_file(tag_dir, 0).exists() and ckpt.rank_file(tag_dir, 1).exists()
    state = ckpt.client_state(uninterrupted)
    assert state["world_size"] == 2 and state["stage"] == "mask"
    assert list((uninterrupted / "tensorboard").glob("events.out.tfevents.*"))
    assert ckpt.complete_tags(uninterrupted / "checkpoints") == ["step_00000009", "step_00000012"]


def test_sigkill_then_resume_reproduces_the_loss_sequence(synth, uninterrupted, seed):
    tmp, cfg, shards = synth
    out = tmp / "killed"
    kill_at = random.Random(seed).randint(4, 10)
    proc = start(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, stage=None))
    try:
        wait_for_step(proc, out / "metrics.jsonl", kill_at)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    tag = ckpt.latest_tag(out / "checkpoints")
    assert tag is not None and ckpt.parse_tag(tag)[0] < 12
    resumed = run(launcher("deepspeed") + train_args(cfg, shards, out, *STEPS, "--resume", "auto",
                                                     stage=None))
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}" in resumed.stderr
    assert losses(out) == losses(uninterrupted)  # bitwise: same floats, same steps


def test_torchrun_zero2_accumulation_sigterm_writes_a_checkpoint(toy):
    """torchrun, ZeRO 2 with our Ranger, 2 micro-batches per step, clipping; SIGTERM mid-run."""
    tmp, cfg, shards = toy
    out = tmp / "sigterm"
    ds = tmp / "zero2-accum2-clip.json"
    ds.write_text(json.dumps({"gradient_accumulation_steps": 2, "gradient_clipping": 1.0,
                              "zero_optimization": {"stage": 2}}))
    proc = start(launcher("torchrun") + train_args(
        cfg, shards, out, "--max-steps", "1000", "--save-every", "1000", "--deepspeed", str(ds),
        "--set", "model.gradient_accumulation_steps=2"))
    try:
        wait_for_step(proc, out / "metrics.jsonl", 3)
        kill_group(proc, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            kill_group(proc, signal.SIGKILL)
    last = losses(out)[-1][0]
    assert f"stopped at step {last} (signal)" in output, output[-3000:]
    assert ckpt.latest_tag(out / "checkpoints") == ckpt.tag_for(last)
    state = ckpt.client_state(out)
    assert state["step"] == last and state["world_size"] == 2
    # ZeRO 2 writes one optimiser partition per rank.
    assert len(list((out / "checkpoints" / ckpt.tag_for(last)).glob("*optim_states.pt"))) == 2
    exported = run(launcher("python") + ["export", str(out), "--out", str(tmp / "z2.safetensors")])
    assert exported.returncode == 0 and "wrote 4 tensors" in exported.stdout, exported.stderr


def test_resume_with_another_number_of_ranks_is_refused(synth, uninterrupted, tmp_path):
    _, cfg, shards = synth
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    proc = run(launcher("python") + train_args(cfg, shards, out, "--max-steps", "14", "--resume", "auto",
                                               stage=None))
    assert proc.returncode == 2
    assert "world_size = 2, this run has 1" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert losses(out) == losses(uninterrupted)  # nothing rewritten
