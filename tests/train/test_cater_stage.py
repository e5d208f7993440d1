"""Stages ``cater1`` .. ``cater4`` (loci.md §3.2-3.9) on real CATER shards (the synthetic release converted
with convert-cater): upstream's iteration schedule from the stream, the five optimizers stepped by upstream's
rule through the stage, the state's checkpoint round trip, clear refusals; and (slow) a 2-rank ``deepspeed``
CPU run of stage cater1 that lowers the loss of a fixed video batch and continues bitwise after a SIGKILL in
the middle of a video followed by ``--resume auto``."""
import random

import pytest
import torch
from safetensors.torch import load_file, save_file

from loci_fast.config import load_config
from loci_fast.train import checkpoint as ckpt
from loci_fast.train.cater_stream import CaterIterations
from loci_fast.train.errors import TrainError
from loci_fast.train.stages import get_stage, stage_from_config

from .helpers import REPO, kill_mid_sequence_then_resume, launcher, losses, run, train_args

CONFIG = REPO / "configs" / "tiny" / "cater-stage1.json"
TF, S = 2, 4  # the tiny config's teacher_forcing and sequence_len


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """8 synthetic CATER videos of 6 frames, converted: 4 train videos in 2 shards."""
    from loci_fast.data.cater.synth import make_release
    from loci_fast.data.convert_cater import convert_cater

    root = tmp_path_factory.mktemp("cater")
    make_release(root / "release", videos=8, frames=6, seed=3)
    convert_cater(root / "release", root / "shards", shard_videos=2, progress=False)
    return str(root / "shards" / "train-*.tar")


def _files(shards):
    import glob

    return sorted(glob.glob(shards))


def _stream(shards, **kw):
    args = dict(batch_size=2, size=(8, 12), sequence_len=S, teacher_forcing=TF, seed=0, rank=0, world_size=1)
    args.update(kw)
    return CaterIterations(_files(shards), **args)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stream_follows_upstreams_loop_and_resumes(shards):
    stream = _stream(shards)
    assert len(stream) == 2 * (TF + S)  # 4 videos, batch 2: two video groups per epoch
    batches = list(stream)
    assert [b["t"] for b in batches] == [-2, -1, 0, 1, 2, 3] * 2
    assert [b["reset"] for b in batches] == [True] + [False] * 5 + [True] + [False] * 5
    assert [b["last"] for b in batches] == [False] * 5 + [True] + [False] * 5 + [True]
    first = batches[:TF + S]
    frames = stream._load(0, 0)["frames"]
    for b in first:
        now, nxt = (0, 0) if b["t"] < 0 else (b["t"], b["t"] + 1)
        assert torch.equal(b["frame"], frames[:, now]) and torch.equal(b["target"], frames[:, nxt].clip(0, 1))
        assert b["frame"].shape == (2, 3, 8, 12) and b["target_xyz"].shape == (2, 3)
    # two ranks: disjoint videos, the same number of iterations
    r0, r1 = _stream(shards, world_size=2), _stream(shards, rank=1, world_size=2)
    assert len(r0) == len(r1) == TF + S
    assert not set(r0.group_videos(0, 0)) & set(r1.group_videos(0, 0))
    # a resume mid-video continues with the same batches
    live = _stream(shards)
    it = iter(live)
    for _ in range(TF + 2):
        next(it)
    saved = live.state_dict()
    again = _stream(shards)
    again.load_state_dict(saved)
    rest = list(again)
    assert [b["t"] for b in rest] == [2, 3, -2, -1, 0, 1, 2, 3]
    assert all(torch.equal(a["frame"], b["frame"]) for a, b in zip(rest, batches[TF + 2:], strict=True))
    with pytest.raises(ValueError, match="world_size"):
        _stream(shards, world_size=2).load_state_dict(saved)


def test_too_short_videos_and_too_few_videos_are_refused(shards):
    with pytest.raises(TrainError, match="sequence_len=5"):
        _stream(shards, sequence_len=6)
    with pytest.raises(TrainError, match="batch_size"):
        _stream(shards, batch_size=3, world_size=2)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_stage_steps_upstreams_optimizers_and_state_round_trips(shards, tmp_path):
    cfg = load_config(CONFIG)
    assert stage_from_config(cfg) == "cater1"
    stage = get_stage("cater1")
    torch.manual_seed(0)
    model = stage.build_model(cfg)
    opt = stage.build_optimizer(model, stage.trainable_parameters(model), cfg, {"zero_optimization": {"stage": 0}})
    stream = stage.batches(cfg, _files(shards), rank=0, world_size=1, seed=0, num_workers=0)
    state, stepped = None, []
    for batch in list(stream)[:TF + S + 1]:
        if state is None or stage.starts_sequence(batch):
            state = stage.initial_state(model, batch)
        out = stage.forward(model, batch, state)
        model.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        stepped.append(opt.stepped)
        # the checkpoint form of the state gives the same state back
        tensors = stage.state_tensors(stage.detach_state(out.state))
        save_file(tensors, str(tmp_path / "state.safetensors"))
        state = stage.state_from_tensors(load_file(str(tmp_path / "state.safetensors")), torch.device("cpu"))
        assert all(torch.equal(state.state_dict()[k], v) for k, v in tensors.items())
    modules = ("encoder", "decoder", "predictor")
    # the run's first iteration trains the background alone (gate shut, no update yet); then the modules;
    # the next video's first iteration steps only the slot seeder's Adam
    assert stepped == [("background",)] + [modules] * (TF + S - 1) + [("init",)]
    assert set(stage.metric_keys) <= set(out.metrics) and float(out.metrics["bce"]) > 0
    assert {"input", "target", "prediction", "slot masks"} == set(out.images)
    assert opt.num_updates == TF + S + 1


def test_refusals_name_the_fix(tmp_path):
    cfg = load_config(CONFIG)
    stage = get_stage("cater1")
    model = stage.build_model(cfg)
    params = stage.trainable_parameters(model)
    for ds in ({"bf16": {"enabled": True}}, {"zero_optimization": {"stage": 1}}):
        with pytest.raises(TrainError, match="fp32.json"):
            stage.build_optimizer(model, params, cfg, ds)
    with pytest.raises(TrainError, match="model.level 2"):
        get_stage("cater3").build_model(cfg)
    with pytest.raises(TrainError, match="original-Loci config"):
        stage.build_model(load_config(REPO / "configs" / "tiny" / "loci-s.json"))


def test_init_from_carries_weights_and_upstream_optimizer_states(tmp_path, gen):
    """import-upstream's two files (weights, five optimizer states by parameter name) start a stage with
    upstream's moments and step counts when load_optimizers is true; cater k+1 takes cater k's export."""
    from loci_fast.loci_v1.optimizers import flat_state
    from loci_fast.train.handover import init_from

    cfg = load_config(CONFIG).replace({"load_optimizers": True})
    stage = get_stage("cater1")
    source = stage.build_model(cfg)
    opt = stage.build_optimizer(source, list(source.parameters()), cfg)
    for first in (True, False, False):
        for p in source.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt.plan(first_of_sequence=first)
        opt.step()
    weights = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))  # no stage: "upstream"
    save_file(flat_state(opt, source), str(tmp_path / "net.optimizer.safetensors"))
    model = stage.build_model(cfg)
    init_from(model, stage, [str(weights)])
    loaded = stage.build_optimizer(model, list(model.parameters()), cfg, init_from=[str(weights)])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), source.state_dict().values()))
    ours, theirs = dict(model.named_parameters()), dict(source.named_parameters())
    assert len(loaded.state) == len(opt.state) > 0
    for n, p in theirs.items():
        if p in opt.state:
            st = loaded.state[ours[n]]
            assert st["step"] == opt.state[p]["step"] and torch.equal(st["exp_avg_sq"], opt.state[p]["exp_avg_sq"])
    with pytest.raises(TrainError, match="optimizer.safetensors"):
        stage.build_optimizer(model, list(model.parameters()), cfg, init_from=[str(tmp_path / "other.safetensors")])
    # the curriculum: cater2 from a cater1 export, cater3 refuses it
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "c1.safetensors"),
              metadata={"stage": "cater1", "step": "3"})
    init_from(get_stage("cater2").build_model(cfg), get_stage("cater2"), [str(tmp_path / "c1.safetensors")])
    with pytest.raises(TrainError, match="cannot initialise stage 'cater3'"):
        init_from(model, get_stage("cater3"), [str(tmp_path / "c1.safetensors")])


# ----------------------------------------------------------------------------- real 2-rank runs
STEPS = ["--max-steps", "18", "--save-every", "6", "--keep", "0", "--set", "learning_rate=0.002"]


def fixed_video_loss(weights: dict, shards: str) -> float:
    """The summed iteration losses over the first video group of rank 0 (same draws for every weight set)."""
    from loci_fast.loci_v1.training import TrainState, iteration_target, train_iteration

    cfg = load_config(CONFIG)
    model = get_stage("cater1").build_model(cfg)
    model.load_state_dict(weights, strict=True)
    stream = _stream(shards)
    torch.manual_seed(0)
    total, state = 0.0, TrainState()
    with torch.no_grad():
        for batch in list(stream)[:TF + S]:
            target = iteration_target(batch["target"], state, batch["reset"], batch["t"] < 0, model.train_settings)
            it = train_iteration(model, batch["frame"], target, batch["target_xyz"], batch["background"], state,
                                 model.train_settings)
            total, state = total + float(it.loss), it.state
    return total


@pytest.fixture(scope="module")
def uninterrupted(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("cater-two") / "uninterrupted"
    proc = run(launcher("deepspeed") + train_args(CONFIG, shards, out, *STEPS, stage=None), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_two_ranks_lower_the_loss(shards, uninterrupted):
    assert [s for s, _ in losses(uninterrupted)] == list(range(1, 19))
    state = ckpt.client_state(uninterrupted)
    assert state["world_size"] == 2 and state["stage"] == "cater1"
    first, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000006")
    last, _ = ckpt.module_weights(uninterrupted / "checkpoints" / "step_00000018")
    before, after = fixed_video_loss(first, shards), fixed_video_loss(last, shards)
    assert after < before, (before, after)


@pytest.mark.slow
def test_sigkill_mid_video_then_resume_is_bitwise(shards, uninterrupted, seed, tmp_path):
    out = tmp_path / "killed"
    # each rank's videos take 6 iterations (steps 6k+1 start one); kill after a checkpoint inside a video
    kill_at = random.Random(seed).choice([8, 9, 10, 11, 14, 15])
    tag, resumed = kill_mid_sequence_then_resume(CONFIG, shards, out, STEPS, kill_at, 6, 18)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / tag}" in resumed.stderr
    assert losses(out) == losses(uninterrupted)  # bitwise: same floats, same steps


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_train_step_times_a_frame_and_a_chunk_with_both_backends(tmp_path):
    """``bench --train-step`` on a cater config: one frame and one 8-iteration chunk per step, both kernel
    backends from the same weights and batch (on the CPU a correctness run: the Triton rows are interpreted)."""
    import math

    from loci_fast.bench import train_step

    res = train_step.run_train_step(str(CONFIG), backends=("reference", "triton"), out_dir=tmp_path, steps=1,
                                    warmup=0, dtype="fp32")
    rows = {(r["stage"], r["backend"]): r for r in res["rows"]}
    assert sorted(rows) == [("cater1 (chunk, 8 it.)", "reference"), ("cater1 (chunk, 8 it.)", "triton"),
                            ("cater1 (frame, 1 it.)", "reference"), ("cater1 (frame, 1 it.)", "triton")]
    for (stage, _), r in rows.items():
        assert r["frames_per_step"] == (8 if "chunk" in stage else 1) and r["samples_per_s"] > 0
        assert math.isfinite(r["first_loss"]) and math.isfinite(r["last_loss"])
    for mode in ("cater1 (chunk, 8 it.)", "cater1 (frame, 1 it.)"):  # the e-prop op agrees across backends
        ref, tri = rows[(mode, "reference")], rows[(mode, "triton")]
        assert tri["first_loss"] == pytest.approx(ref["first_loss"], rel=1e-4)
    assert (tmp_path / res["path"].split("/")[-1]).is_file()


def test_configs_select_their_stage_and_upstreams_need_one(tmp_path):
    import json

    for k in range(1, 5):
        cfg = load_config(REPO / "configs" / f"cater-stage{k}.json")
        assert stage_from_config(cfg) == f"cater{k}"
        assert get_stage(f"cater{k}").level == cfg["model"]["level"]
    upstream = json.loads((REPO / "configs" / "cater-stage3.json").read_text())
    for key in ("kind", "stage", "data", "seed", "deepspeed", "kernels"):
        upstream.pop(key)
    (tmp_path / "cater-stage3.json").write_text(json.dumps(upstream))
    with pytest.raises(TrainError, match="--stage cater1"):
        stage_from_config(load_config(tmp_path / "cater-stage3.json"))


def test_compat_flags_reach_the_training_loop():
    stage = get_stage("cater1")
    for value in (True, False):
        cfg = load_config(CONFIG).replace({"model.compat": {"init_first_iteration_gradient": value,
                                                            "warmup_target_carry_over": value}})
        model = stage.build_model(cfg)
        opt = stage.build_optimizer(model, list(model.parameters()), cfg)
        assert opt.init_whole_sequence is (not value) and model.train_settings.carry_warmup_target is value
