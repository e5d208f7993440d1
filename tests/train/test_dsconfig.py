"""The DeepSpeed config is filled from the training config and contradictions are refused."""
import json
from pathlib import Path

import pytest

from loci_fast.train.dsconfig import ds_config_path, engine_dtype_name, read_ds_config, resolve_ds_config
from loci_fast.train.errors import TrainError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "deepspeed"
TRAINING_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.json") if p.parent.name != "deepspeed")
BASE = dict(micro_batch=4, grad_accum=1, world_size=2, mixed_precision=False, learning_rate=1e-4,
            on_gpu=False)


def test_auto_fields_are_filled_from_the_training_config():
    ds, client = resolve_ds_config(read_ds_config(None), **BASE)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"],
            ds["train_batch_size"]) == (4, 1, 8)
    assert client and engine_dtype_name(ds) == "fp32"


@pytest.mark.parametrize("field, value, names", [
    ("train_micro_batch_size_per_gpu", 8, "model.batch_size"),
    ("gradient_accumulation_steps", 2, "model.gradient_accumulation_steps"),
    ("train_batch_size", 16, "ranks"),
])
def test_batch_size_contradictions_are_refused(field, value, names):
    with pytest.raises(TrainError, match=f"{field}={value}.*{names}"):
        resolve_ds_config({field: value}, **BASE)


def test_half_precision_needs_mixed_precision_in_the_training_config():
    with pytest.raises(TrainError, match="bf16.*mixed_precision=false"):
        resolve_ds_config({"bf16": {"enabled": True}}, **BASE)
    with pytest.raises(TrainError, match="mixed_precision=true.*fp32"):
        resolve_ds_config({}, **{**BASE, "mixed_precision": True})
    ds, _ = resolve_ds_config({"bf16": {"enabled": True}}, **{**BASE, "mixed_precision": True})
    assert engine_dtype_name(ds) == "bf16"


def test_zero_with_our_optimizer_is_allowed_and_deepspeed_adam_stays_off_the_jit():
    ds, client = resolve_ds_config({"zero_optimization": {"stage": 2}}, **BASE)
    assert client and ds["zero_allow_untested_optimizer"] is True
    ds, client = resolve_ds_config({"optimizer": {"type": "AdamW", "params": {}}}, **BASE)
    assert not client and ds["optimizer"]["params"] == {"lr": 1e-4, "torch_adam": True}
    with pytest.raises(TrainError, match="lr=0.1"):
        resolve_ds_config({"optimizer": {"type": "AdamW", "params": {"lr": 0.1}}}, **BASE)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_shipped_deepspeed_configs_resolve(path):
    ds = json.loads(path.read_text())
    half = any(ds.get(k, {}).get("enabled") for k in ("bf16", "fp16"))
    gas = ds.get("gradient_accumulation_steps", 1)
    resolved, _ = resolve_ds_config(ds, **{**BASE, "mixed_precision": half,
                                           "grad_accum": gas if gas != "auto" else 1})
    assert resolved["train_batch_size"] == 4 * resolved["gradient_accumulation_steps"] * 2


def test_missing_or_broken_file_is_named(tmp_path):
    with pytest.raises(TrainError, match="does not exist"):
        read_ds_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TrainError, match="not valid JSON"):
        read_ds_config(bad)


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_find_their_deepspeed_config_from_any_folder(config, tmp_path, monkeypatch):
    from loci_fast.config import load_config

    cfg = load_config(config)
    monkeypatch.chdir(tmp_path)  # a user's run folder, not the repository
    path = ds_config_path(None, cfg)
    assert path is not None and path.resolve() == CONFIGS / "fp32.json"
    assert read_ds_config(path) == json.loads((CONFIGS / "fp32.json").read_text())


def test_deepspeed_lookup_order_and_misses_name_the_places(tmp_path, monkeypatch):
    from loci_fast.config import load_config

    conf, work = tmp_path / "conf" / "runs", tmp_path / "work"
    conf.mkdir(parents=True)
    work.mkdir()
    data = {"model_path": "t", "deepspeed": "ds.json",
            "model": {"batch_size": 2, "num_slots": 3, "gestalt_size": 64, "input_size": [64, 64]}}
    (conf / "run.json").write_text(json.dumps(data))
    (work / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    monkeypatch.chdir(work)
    cfg = load_config(conf / "run.json")
    # Found nowhere beside the config or above it: the cwd (what older configs relied on).
    assert ds_config_path(None, cfg) == work / "ds.json"
    # A folder above the config wins over the cwd, the config's own folder over the one above.
    (tmp_path / "conf" / "ds.json").write_text("{}")
    assert ds_config_path(None, cfg) == tmp_path / "conf" / "ds.json"
    (conf / "ds.json").write_text("{}")
    assert ds_config_path(None, cfg) == conf / "ds.json"
    assert ds_config_path("ds.json", cfg) == Path("ds.json")  # the flag is relative to the cwd
    assert ds_config_path(None, load_config({k: v for k, v in data.items() if k != "deepspeed"})) is None
    for p in (conf / "ds.json", tmp_path / "conf" / "ds.json", work / "ds.json"):
        p.unlink()
    with pytest.raises(TrainError, match=f"run.json: deepspeed ds.json does not exist .*{conf}.*{work}"):
        ds_config_path(None, cfg)
    with pytest.raises(TrainError, match="--deepspeed ds.json does not exist"):
        ds_config_path("ds.json", cfg)


_CLIP_PROBE = """
import json, sys, torch, deepspeed
from loci_fast.train.engine import init_distributed
from loci_fast.train.dsconfig import read_ds_config, resolve_ds_config
init_distributed()
ds, _ = resolve_ds_config(read_ds_config(sys.argv[1] or None), micro_batch=1, grad_accum=1, world_size=1,
                          mixed_precision=False, learning_rate=1.0, on_gpu=False)
model = torch.nn.Linear(4, 1, bias=False)
start = model.weight.detach().clone()
engine, *_ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()),
                                  optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=ds)
engine.backward(1000.0 * engine.module.weight.sum())
engine.step()
print(json.dumps(float((start - engine.module.weight.detach()).norm())))
"""


@pytest.mark.parametrize("path, moved", [("", 2000.0), (str(CONFIGS / "fp32.json"), 2000.0),
                                         (str(CONFIGS / "fp32-clip1.json"), 1.0)])
def test_gradients_are_clipped_only_when_the_deepspeed_config_asks(tmp_path, path, moved):
    # DeepSpeed alone clips to norm 1.0; upstream never clips. Gradient norm here: 1000 * sqrt(4).
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _CLIP_PROBE, path], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == pytest.approx(moved, rel=1e-4)
