"""``loci-fast eval`` on object-pretraining weights: every accepted weights format, per-crop JSONL,
the table, and resume giving the numbers of an uninterrupted run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from loci_fast.cli import main
from loci_fast.config import load_config
from loci_fast.model.pretrainer import LociPretrainer

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny" / "pretrain-encoder-decoder-stage1.json"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("eval-data")
    proc = subprocess.run([sys.executable, "-m", "loci_fast.cli", "data", "synth", "--out", str(tmp), "--videos", "3",
                           "--frames", "4", "--size", "64", "--objects", "2", "2", "--shard-videos", "1",
                           "--workers", "1", "--no-progress", "--split", "val"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return str(tmp / "val-*.tar")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """One random stage-1 model in the three formats `--checkpoint` takes."""
    from safetensors.torch import save_file

    from loci_fast.train import checkpoint as ckpt

    tmp = tmp_path_factory.mktemp("eval-weights")
    cfg = load_config(CONFIG)
    torch.manual_seed(3)
    state = {k: v.contiguous() for k, v in LociPretrainer(cfg["model"]).state_dict().items()}
    raw = json.loads(CONFIG.read_text())
    exported = tmp / "export.safetensors"
    save_file(state, str(exported), metadata={"format": "loci-fast", "stage": "stage1", "config": json.dumps(raw)})
    converted = tmp / "converted.safetensors"  # import-upstream output: no metadata
    save_file(state, str(converted))
    tag = tmp / "run" / ckpt.CHECKPOINT_DIR / ckpt.tag_for(5)
    tag.mkdir(parents=True)
    save_file(state, str(tag / ckpt.WEIGHTS), metadata={"format": "loci-fast"})  # a run's checkpoint files
    (tag / ckpt.CLIENT).write_text(json.dumps({"config": raw, "stage": "stage1", "step": 5}))
    (tag / ckpt.COMPLETE).write_text("ok\n")
    return {"export": exported, "converted": converted, "run": tmp / "run"}


def _eval(checkpoint: Path, shards: str, out: Path, *extra: str) -> int:
    return main(["eval", "--checkpoint", str(checkpoint), "--data", shards, "--out", str(out), "--batch-size", "3",
                 "--no-progress", *extra])


def _samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_eval_writes_per_crop_records_and_the_table(weights, shards, tmp_path):
    assert _eval(weights["export"], shards, tmp_path / "a", "--batches", "2") == 0
    samples = _samples(tmp_path / "a")
    assert [(s["batch"], s["item"]) for s in samples] == [(b, i) for b in range(2) for i in range(3)]
    assert all(0 <= s["iou"] <= 1 and s["position_px"] >= 0 for s in samples)
    result = json.loads((tmp_path / "a" / "results.json").read_text())
    row = result["rows"][0]
    assert row["stage"] == "stage1" and row["crops"] == 6
    assert row["mean_iou"] == pytest.approx(sum(s["iou"] for s in samples) / 6)
    assert row["position_px"] == pytest.approx(sum(s["position_px"] for s in samples) / 6)
    table = (tmp_path / "a" / "results.md").read_text()
    assert "| stage1 | 6 | " in table and "position error (px)" in table


def test_every_weights_format_gives_the_same_numbers(weights, shards, tmp_path):
    assert _eval(weights["export"], shards, tmp_path / "export", "--batches", "1") == 0
    assert _eval(weights["run"], shards, tmp_path / "run", "--batches", "1") == 0
    assert _eval(weights["converted"], shards, tmp_path / "conv", "--batches", "1", "--config", str(CONFIG),
                 "--stage", "stage1") == 0
    reference = _samples(tmp_path / "export")
    assert _samples(tmp_path / "run") == reference
    assert _samples(tmp_path / "conv") == reference


def test_weights_without_config_ask_for_one(weights, shards, tmp_path, capsys):
    assert _eval(weights["converted"], shards, tmp_path / "x", "--batches", "1") == 2
    assert "--config" in capsys.readouterr().err


def test_resume_skips_finished_batches_and_matches_an_uninterrupted_run(weights, shards, tmp_path):
    assert _eval(weights["export"], shards, tmp_path / "full", "--batches", "3") == 0
    assert _eval(weights["export"], shards, tmp_path / "part", "--batches", "2") == 0
    # A kill while writing batch 1: its batch line is cut, so batch 1 is redone.
    batches = (tmp_path / "part" / "batches.jsonl").read_text().splitlines()
    (tmp_path / "part" / "batches.jsonl").write_text(batches[0] + "\n" + batches[1][:7])
    before = _samples(tmp_path / "part")
    assert _eval(weights["export"], shards, tmp_path / "part", "--batches", "3") == 0
    after = _samples(tmp_path / "part")
    assert after[:3] == before[:3]
    assert sorted(after, key=lambda r: (r["batch"], r["item"])) == _samples(tmp_path / "full")
    full = json.loads((tmp_path / "full" / "results.json").read_text())["rows"][0]
    part = json.loads((tmp_path / "part" / "results.json").read_text())["rows"][0]
    assert part == full


def test_resume_with_other_settings_is_refused(weights, shards, tmp_path, capsys):
    assert _eval(weights["export"], shards, tmp_path / "r", "--batches", "1") == 0
    assert _eval(weights["export"], shards, tmp_path / "r", "--batches", "1", "--seed", "8") == 2
    assert "--fresh" in capsys.readouterr().err
    assert _eval(weights["export"], shards, tmp_path / "r", "--batches", "1", "--seed", "8", "--fresh") == 0


def test_demo_report_numbers_come_from_the_evaluator(weights, shards, tmp_path):
    from loci_fast import demo

    (tmp_path / "report").mkdir()
    (tmp_path / "stage1").symlink_to(weights["run"], target_is_directory=True)
    stage = demo.DemoStage("stage1", "unused.json", 5)
    demo.evaluate(stage, tmp_path, shards, batches=2)
    assert {"loss", "mask_loss", "mean_iou", "position_px", "on_object"} <= set(stage.eval)
    assert (tmp_path / "report" / "reconstruction-stage1.png").stat().st_size > 1000
    assert stage.rows[:2] == ["input rgb", "input mask"]
    # The same crops and seeds through `loci-fast eval`: the same position error.
    assert _eval(weights["run"], shards, tmp_path / "cli", "--batches", "2", "--batch-size", "16") == 0
    row = json.loads((tmp_path / "cli" / "results.json").read_text())["rows"][0]
    assert row["position_px"] == pytest.approx(stage.eval["position_px"])
    assert row["model_mean_iou"] == pytest.approx(stage.eval["mean_iou"])
