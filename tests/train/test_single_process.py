"""One process without a launcher: outputs, export, refusal to mix runs, non-finite losses."""
import json

import pytest
import torch

from loci_fast.cli import main
from loci_fast.train import checkpoint as ckpt
from loci_fast.train.export import read_weights
from loci_fast.train.logs import read_metrics

from .helpers import launcher, run, toy_setup, train_args


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    cfg, shards = toy_setup(tmp)
    out = tmp / "run"
    proc = run(launcher("python") + train_args(cfg, shards, out, "--max-steps", "4",
                                               "--save-every", "2") + ["--image-every", "2"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, cfg, shards, out


def test_outputs_of_a_run(finished):
    _, _, _, out = finished
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"loss", "mse", "samples_per_s"} <= set(r) for r in records)
    assert sorted(p.name for p in (out / "images").glob("*.png")) == [
        "step_00000002.png", "step_00000004.png"]
    state = ckpt.client_state(out)
    assert state["step"] == 4 and state["stage"] == "toy" and len(state["config_hash"]) == 64
    assert state["config"]["model"]["batch_size"] == 4


def test_export_writes_the_checkpoint_weights(finished, capsys):
    tmp, _, _, out = finished
    target = tmp / "model.safetensors"
    assert main(["export", str(out), "--out", str(target)]) == 0
    weights, meta = read_weights(target)
    saved, _ = ckpt.module_weights(out)
    assert set(weights) == set(saved) and meta["stage"] == "toy" and meta["step"] == "4"
    for key in saved:
        assert torch.equal(weights[key], saved[key].float())
    assert json.loads(meta["config"])["model"]["gestalt_size"] == 64


def test_out_dir_with_checkpoints_needs_resume(finished, capsys):
    _, cfg, shards, out = finished
    assert main(train_args(cfg, shards, out, "--max-steps", "6")) == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints" in err and "--resume auto" in err


def test_resume_with_another_config_is_refused(finished, capsys):
    _, cfg, shards, out = finished
    argv = train_args(cfg, shards, out, "--resume", "auto", "--set", "learning_rate=0.5")
    assert main(argv) == 2
    assert "trained with another config" in capsys.readouterr().err


def test_init_from_checkpoint_of_the_same_stage_and_refusals(finished, capsys):
    tmp, cfg, shards, out = finished
    from loci_fast.train.handover import init_from
    from loci_fast.train.stages import get_stage
    from tests.train.toy_stage import ToyModel

    model = ToyModel(64)
    report = init_from(model, get_stage("tests.train.toy_stage:TOY"), [str(out)])
    saved, _ = ckpt.module_weights(out)
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    assert "4 of 4 tensors loaded" in report[-1]
    # Another stage's checkpoint, and a model of another size, are refused before training.
    argv = train_args(cfg, shards, tmp / "other", "--init-from", str(out), stage="tests.train.toy_stage:TOY_NAN")
    assert main(argv) == 2
    assert "'toy' checkpoint cannot initialise stage 'toy_nan'" in capsys.readouterr().err
    argv = train_args(cfg, shards, tmp / "other", "--init-from", str(out),
                      "--set", "model.gestalt_size=128")
    assert main(argv) == 2
    assert "has shape" in capsys.readouterr().err


def test_non_finite_losses_stop_with_a_checkpoint(tmp_path):
    cfg, shards = toy_setup(tmp_path)
    out = tmp_path / "nan"
    argv = train_args(cfg, shards, out, "--max-steps", "50", "--max-nonfinite", "3",
                      stage="tests.train.toy_stage:TOY_NAN")
    proc = run(launcher("python") + argv)
    assert proc.returncode == 2
    # Batches 0-2 train (steps 1-3); batches 3, 4, 5 are non-finite: skipped, then the stop.
    assert "3 non-finite steps in a row, the last at step 4" in proc.stderr, proc.stderr[-2000:]
    assert ckpt.latest_tag(out / "checkpoints") == "step_00000003"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_parameters_the_loss_has_not_reached_are_not_stepped(tmp_path):
    # DeepSpeed hands them zero gradients; Ranger would decay them and advance their RAdam state.
    cfg, shards = toy_setup(tmp_path)
    out = tmp_path / "late"
    argv = train_args(cfg, shards, out, "--max-steps", "6", "--save-every", "3", "--keep", "5",
                      "--set", "weight_decay=0.1", "--set", "learning_rate=0.01",
                      stage="tests.train.toy_stage:TOY_LATE")
    proc = run(launcher("python") + argv)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def saved(tag):
        state = torch.load(out / "checkpoints" / tag / "mp_rank_00_model_states.pt", map_location="cpu",
                           weights_only=False)
        steps = {tuple(v["exp_avg"].shape): v["step"] for v in state["optimizer"]["state"].values()}
        return state["module"]["late"], steps

    late, steps = saved("step_00000003")  # batches 0-2 never reach `late`, shape (4,)
    assert torch.equal(late, torch.ones(4)) and (4,) not in steps and steps[(3,)] == 3
    late, steps = saved("step_00000006")  # batches 3-5 do: three RAdam steps, still inside its warm-up
    assert steps[(4,)] == 3 and steps[(3,)] == 6 and torch.equal(late, torch.ones(4))
