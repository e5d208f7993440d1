"""The trainer never loses or poisons a run: non-finite gradients, checkpoint files and manifests,
durable saves, resume guards, the run lock, recurrent state. One process, the toy stages."""
import json
import os
import random
import signal

import pytest
import torch

from loci_fast.cli import main
from loci_fast.train import checkpoint as ckpt
from loci_fast.train import manifest, rank_state
from loci_fast.train.export import read_weights
from loci_fast.train.logs import read_metrics

from .helpers import kill_group, launcher, losses, run, start, toy_setup, train_args, wait_for_step

TOY_STAGE = "tests.train.toy_stage:"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hardening")
    cfg, shards = toy_setup(tmp)
    return tmp, cfg, shards


@pytest.fixture(scope="module")
def four_steps(toy):
    """A finished 4-step run with checkpoints at steps 2 and 4."""
    tmp, cfg, shards = toy
    out = tmp / "four"
    proc = run(launcher("python") + train_args(cfg, shards, out, "--max-steps", "4", "--save-every", "2",
                                               "--keep", "0"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _ranger_steps(tag_dir):
    # Tests may unpickle what their own run wrote; loci-fast itself never does.
    state = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return sorted({int(v["step"]) for v in state["optimizer"]["state"].values()})


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_infinite_gradient_of_a_finite_loss_never_reaches_the_optimizer(toy):
    tmp, cfg, shards = toy
    out = tmp / "infgrad"
    proc = run(launcher("python") + train_args(cfg, shards, out, "--max-steps", "4", "--save-every", "1",
                                               "--keep", "0", stage=TOY_STAGE + "TOY_INF_GRAD"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Batches 2 and 3 have finite losses but infinite gradients: both steps are skipped.
    assert proc.stderr.count("non-finite gradient, optimiser step skipped") == 2, proc.stderr[-2000:]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["skipped_nonfinite"] == 2
    for tag in ckpt.complete_tags(out / "checkpoints"):
        weights, _ = ckpt.module_weights(out / "checkpoints" / tag)
        assert all(torch.isfinite(w).all() for w in weights.values()), tag
    assert _ranger_steps(out / "checkpoints" / "step_00000004") == [4]  # 4 real steps, not 6
    assert ckpt.client_state(out)["skipped_nonfinite"] == 2


def test_checkpoints_of_our_own_hold_no_pickles(four_steps, toy, tmp_path):
    tmp, cfg, shards = toy
    tag_dir = four_steps / "checkpoints" / "step_00000004"
    for name in ("weights.safetensors", "client.json", "rank_00000.safetensors", "MANIFEST.json", "COMPLETE"):
        assert (tag_dir / name).is_file(), name
    meta, rng, state = rank_state.read(ckpt.rank_file(tag_dir, 0))
    assert meta["rank"] == 0 and "rng/torch" in rng and meta["data"] == {"position": 4} and state == {}
    # export and --init-from read nothing DeepSpeed pickled: they work with those files gone.
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(four_steps, copy)
    for pt in (copy / "checkpoints").rglob("*.pt"):
        pt.unlink()
    assert main(["export", str(copy), "--out", str(tmp_path / "w.safetensors")]) == 0
    weights, meta = read_weights(tmp_path / "w.safetensors")
    assert meta["stage"] == "toy" and meta["step"] == "4" and len(weights) == 4
    from loci_fast.train.handover import init_from
    from loci_fast.train.stages import get_stage
    from tests.train.toy_stage import ToyModel

    model = ToyModel(64)
    init_from(model, get_stage(TOY_STAGE + "TOY"), [str(copy)])
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)


def test_a_tampered_checkpoint_is_refused_and_auto_falls_back(four_steps, toy, tmp_path):
    tmp, cfg, shards = toy
    import shutil

    out = tmp_path / "tampered"
    shutil.copytree(four_steps, out)
    target = out / "checkpoints" / "step_00000004" / "mp_rank_00_model_states.pt"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    proc = run(launcher("python") + train_args(cfg, shards, out, "--resume", str(out / "checkpoints" / "step_00000004"),
                                               "--max-steps", "6"))
    assert proc.returncode == 2 and "mp_rank_00_model_states.pt" in proc.stderr and "SHA-256" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run(launcher("python") + train_args(cfg, shards, out, "--resume", "auto", "--max-steps", "6"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping checkpoint step_00000004" in proc.stderr and "resuming from step_00000002" in proc.stderr
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert losses(out)[:2] == losses(four_steps)[:2]


def test_max_steps_already_reached_rewrites_nothing(four_steps, toy):
    tmp, cfg, shards = toy
    before = _snapshot(four_steps)
    for max_steps in ("4", "3"):
        proc = run(launcher("python") + train_args(cfg, shards, four_steps, "--resume", "auto",
                                                   "--max-steps", max_steps))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "nothing to do" in proc.stdout and "at step 4" in proc.stdout, proc.stdout
    assert _snapshot(four_steps) == before


@pytest.mark.parametrize("flag,value,named", [
    ("--seed", "7", "--seed"),
    ("--workers", "1", "--workers"),
    ("--data", None, "--data"),
])
def test_resume_guards_name_the_flag(four_steps, toy, tmp_path, flag, value, named):
    tmp, cfg, shards = toy
    import shutil

    out = tmp_path / "guarded"
    shutil.copytree(four_steps, out)
    before = _snapshot(out)
    extra = [flag, value] if value else []
    data = shards if value else shards.replace("{000000..000001}", "000000")
    argv = train_args(cfg, data, out, "--resume", "auto", "--max-steps", "6", *extra)
    proc = run(launcher("python") + argv)
    assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert _snapshot(out) == before


def test_resume_guard_on_the_kernel_backend(four_steps, toy, tmp_path, monkeypatch):
    tmp, cfg, shards = toy
    import shutil

    out = tmp_path / "kernels"
    shutil.copytree(four_steps, out)
    monkeypatch.setenv("LOCI_FAST_KERNELS", "reference")
    proc = run(launcher("python") + train_args(cfg, shards, out, "--resume", "auto", "--max-steps", "6"))
    assert proc.returncode == 2 and "LOCI_FAST_KERNELS" in proc.stderr and "'auto'" not in proc.stderr
    assert '"auto"' in proc.stderr and '"reference"' in proc.stderr, proc.stderr[-2000:]


def test_metrics_keep_every_step_up_to_the_resumed_one(four_steps, toy, tmp_path):
    tmp, cfg, shards = toy
    import shutil

    out = tmp_path / "older"
    shutil.copytree(four_steps, out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    proc = run(launcher("python") + train_args(cfg, shards, out, "--resume", str(out / "checkpoints" / "step_00000002"),
                                               "--max-steps", "3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    now = (out / "metrics.jsonl").read_text().splitlines()
    assert now[:2] == lines[:2] and [json.loads(x)["step"] for x in now] == [1, 2, 3]
    assert losses(out) == losses(four_steps)[:3]  # step 3 again, bitwise


def test_a_second_run_on_the_same_folder_is_refused_then_a_stale_lock_is_taken_over(toy, tmp_path):
    tmp, cfg, shards = toy
    out = tmp_path / "locked"
    first = start(launcher("python") + train_args(cfg, shards, out, "--max-steps", "100000", "--save-every", "100000"))
    try:
        wait_for_step(first, out / "metrics.jsonl", 1)
        second = run(launcher("python") + train_args(cfg, shards, out, "--resume", "auto", "--max-steps", "3"))
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr and "host" in second.stderr, \
            second.stderr[-2000:]
    finally:
        kill_group(first, signal.SIGKILL)
        first.wait()
    third = run(launcher("python") + train_args(cfg, shards, out, "--resume", "auto", "--max-steps", "2"))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "taking over the lock" in third.stderr and f"pid {first.pid}" in third.stderr


def test_recurrent_state_resumes_exactly_in_mid_sequence(toy, seed):
    tmp, cfg, shards = toy
    stage = TOY_STAGE + "TOY_RECURRENT"
    steps = ["--max-steps", "9", "--save-every", "1", "--keep", "2"]
    whole = tmp / f"recurrent-whole-{seed}"
    proc = run(launcher("python") + train_args(cfg, shards, whole, *steps, stage=stage))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The checkpoint stores the state; one in mid-sequence holds a non-trivial one.
    _, _, state = rank_state.read(ckpt.rank_file(whole / "checkpoints" / "step_00000008", 0))
    assert set(state) >= {"hidden", "meta.0"} and float(state["meta.0"]) == 2.0

    out = tmp / f"recurrent-killed-{seed}"
    kill_at = random.Random(seed).choice([2, 4, 5, 7])  # not at a sequence start
    proc = start(launcher("python") + train_args(cfg, shards, out, *steps, stage=stage))
    try:
        wait_for_step(proc, out / "metrics.jsonl", kill_at)
    finally:
        kill_group(proc, signal.SIGKILL)
        proc.wait()
    resumed = run(launcher("python") + train_args(cfg, shards, out, *steps, "--resume", "auto", stage=stage))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(out) == losses(whole)
    assert [r["hidden"] for r in read_metrics(out / "metrics.jsonl")] == \
        [r["hidden"] for r in read_metrics(whole / "metrics.jsonl")]


def test_manifest_names_what_changed(tmp_path):
    folder = tmp_path / "step_00000001"
    folder.mkdir()
    (folder / "a.bin").write_bytes(os.urandom(100))
    manifest.write(folder)
    assert manifest.problem(folder) is None
    (folder / "a.bin").write_bytes(os.urandom(99))
    assert "a.bin has 99 bytes" in manifest.problem(folder)
    (folder / "a.bin").unlink()
    assert "a.bin is missing" in manifest.problem(folder)
    (folder / manifest.MANIFEST).unlink()
    assert "MANIFEST.json is missing" in manifest.problem(folder)
