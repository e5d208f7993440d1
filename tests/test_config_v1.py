"""The original Loci's configs: upstream's model/cater*.json load unchanged as the loci-v1 kind (schema_v1)."""
import json
import os
from pathlib import Path

import pytest

from loci_fast.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM_V1 = os.environ.get("LOCI_FAST_UPSTREAM_V1", "")
#: stage -> (level, learning rate, supervision factor), loci.md §3.9
STAGES = {1: (1, 1e-4, 0.01), 2: (1, 3.33333e-05, 0.1), 3: (2, 3.33333e-05, 0.1), 4: (2, 1e-05, 0.3333333)}


def stage1() -> dict:
    return json.loads((ROOT / "configs" / "cater-stage1.json").read_text())


@pytest.mark.skipif(not UPSTREAM_V1, reason="set LOCI_FAST_UPSTREAM_V1 to an upstream Loci checkout")
@pytest.mark.parametrize("name", ["cater", "cater-stage1", "cater-stage2", "cater-stage3", "cater-stage4"])
def test_upstream_cater_configs_load_unchanged(name):
    path = Path(UPSTREAM_V1) / "model" / f"{name}.json"
    cfg = load_config(path)
    raw = json.loads(path.read_text())
    assert cfg["kind"] == "loci-v1" and cfg.model_path == raw["model_path"]
    for key, value in raw["model"].items():
        if not isinstance(value, dict):
            assert cfg.model[key] == value, key
    assert cfg.learning_rate == raw["learning_rate"] and cfg.model.background.learning_rate == raw["learning_rate"]


@pytest.mark.parametrize("n", sorted(STAGES))
def test_our_stage_configs_are_upstreams_stages_on_shards(n):
    level, lr, sup = STAGES[n]
    for path in (ROOT / "configs" / f"cater-stage{n}.json", ROOT / "configs" / "tiny" / f"cater-stage{n}.json"):
        cfg = load_config(path)
        assert (cfg["kind"], cfg.stage, cfg.model.level) == ("loci-v1", f"cater{n}", level)
        assert cfg.learning_rate == pytest.approx(lr) and cfg.model.background.learning_rate == pytest.approx(lr)
        assert cfg.model.supervision_factor == pytest.approx(sup)
        assert cfg.data.train[0].shards.endswith("train-*.tar")
    full = load_config(ROOT / "configs" / f"cater-stage{n}.json").model
    assert (full.batch_size, full.num_objects, full.gestalt_size, list(full.input_size)) == (16, 10, 96, [240, 320])


def test_tiny_stage_configs_build_the_model():
    from loci_fast.loci_v1 import LociV1

    for n in sorted(STAGES):
        cfg = load_config(ROOT / "configs" / "tiny" / f"cater-stage{n}.json")
        model = LociV1.from_config(cfg.model, teacher_forcing=cfg.teacher_forcing)
        assert model.level == STAGES[n][0] and model.encoder.level == model.decoder.level == model.level


def test_kind_detection_and_the_loci_s_schema_are_separate():
    data = stage1()
    data.pop("kind")
    assert load_config(data)["kind"] == "loci-v1"  # datatype cater + model.num_objects
    err = pytest.raises(ConfigError, load_config, {**stage1(), "pretrainer_iterations": 3}).value
    assert "pretrainer_iterations" in str(err)  # a Loci-s key is unknown here


@pytest.mark.parametrize("change, words", [
    ({"model.background.use": True}, ["background.use", "BackgroundEnhancer"]),
    ({"closed_loop": True}, ["closed_loop", "not supported"]),
    ({"msssim": True}, ["msssim", "not supported"]),
    ({"model.img_channels": 4}, ["img_channels", "BGR"]),
    ({"model.level": 3}, ["level", "level 1"]),
    ({"model.input_size": [240, 300]}, ["input_size", "16x"]),
    ({"model.encoder.level1_channels": 20}, ["encoder.level1_channels", "multiple of 12"]),
    ({"model.decoder.level1_channels": 4}, ["decoder.level1_channels", "multiple of 3"]),
    ({"model.decoder.channels": 30}, ["decoder.channels", "multiple of 12"]),
    ({"model.compat": {"noise_in_evl": False}}, ["noise_in_evl", "noise_in_eval"]),
    ({"datatype": "video"}, ["datatype"]),
])
def test_unsupported_settings_are_refused_with_the_reason(change, words):
    err = pytest.raises(ConfigError, load_config, stage1(), overrides=change).value
    for w in words:
        assert w in str(err), (w, str(err))


def test_compat_flags_and_override_round_trip():
    cfg = load_config(ROOT / "configs" / "cater-stage3.json", overrides={"model.compat": {"noise_in_eval": False}})
    assert cfg.model.compat["noise_in_eval"] is False
    assert load_config(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_older_non_cater_configs_are_still_refused():
    legacy = {"model_path": "old", "datatype": "x", "model": {"level": 1, "num_objects": 4, "crop_size": [64, 64]}}
    err = pytest.raises(ConfigError, load_config, legacy).value
    assert "older Loci code base" in str(err) and "cater" in str(err)
