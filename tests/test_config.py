"""loci_fast.config: every shipped config loads; bad configs fail naming the key; nodes behave."""
from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from loci_fast.config import (CONFIG, Config, ConfigError, ConfigNode, describe_defaults, load_config,
                              parse_overrides)
from loci_fast.config.kinds import Section

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((ROOT / "configs").glob("*.json")) + sorted((ROOT / "configs" / "tiny").glob("*.json"))


def minimal() -> dict:
    """The smallest valid config: the required keys only."""
    return {"model_path": "t", "model": {"batch_size": 2, "num_slots": 3, "gestalt_size": 64,
                                         "input_size": [64, 96]}}


def raises(data: dict, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(data, **kw)
    return info.value


# --- shipped configs -------------------------------------------------------------------------

def test_configs_exist():
    names = {p.name for p in CONFIG_FILES}
    for stage in ("pretrain-mask-decoder", "pretrain-depth-decoder", "pretrain-rgb-decoder",
                  "pretrain-encoder-decoder-stage1", "pretrain-encoder-decoder-stage1-depth",
                  "pretrain-encoder-decoder-stage2", "pretrain-encoder-decoder-stage2-depth",
                  "pretrain-background", "pretrain-background-depth", "loci-s", "loci-s-depth"):
        assert f"{stage}.json" in names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    assert cfg.source == str(path)
    raw = json.loads(path.read_text())
    assert _is_subset(raw, cfg.to_dict())
    assert load_config(cfg.to_dict()).to_dict() == cfg.to_dict()


# reference §21.2: B, input_depth, pretraining_mode, iterations, background latent/layers
STAGE_VALUES = {
    "pretrain-mask-decoder": (32, True, "mask", 0, 64, 2),
    "pretrain-depth-decoder": (32, True, "depth", 0, 64, 2),
    "pretrain-rgb-decoder": (32, True, "rgb", 0, 64, 2),
    "pretrain-encoder-decoder-stage1": (32, False, "all", 0, 64, 2),
    "pretrain-encoder-decoder-stage1-depth": (32, True, "all", 0, 64, 2),
    "pretrain-encoder-decoder-stage2": (32, False, "all", 3, 64, 2),
    "pretrain-encoder-decoder-stage2-depth": (32, True, "all", 3, 64, 2),
    "pretrain-background": (32, False, "all", 3, 128, 4),
    "pretrain-background-depth": (32, True, "all", 3, 64, 2),
    "loci-s": (1, False, "all", 3, 128, 4),
    "loci-s-depth": (1, True, "all", 3, 64, 2),
}


@pytest.mark.parametrize("stage", sorted(STAGE_VALUES))
def test_stage_configs_carry_upstream_values(stage):
    cfg = load_config(ROOT / "configs" / f"{stage}.json")
    b, depth, mode, iters, latent, layers = STAGE_VALUES[stage]
    m = cfg.model
    assert (m.batch_size, m.input_depth, cfg.pretraining_mode, cfg.pretrainer_iterations) == (b, depth, mode, iters)
    assert (m.background.latent_channels, m.background.num_layers) == (latent, layers)
    # §21.1 shared values
    assert (m.num_slots, m.gestalt_size, m.input_size) == (16, 256, [256, 256])
    assert m.encoder.to_dict() == {"channels": 32, "blocks": [1, 1, 3, 2], "hyper_channels": 256}
    assert m.decoder.rgb.pretrain_encoder_blocks == [4, 8] and m.decoder.depth.layers == 3
    assert (cfg.learning_rate, cfg.weight_decay, m.inference_mode) == (
        1e-4, 1e-3, "random" if stage.startswith("loci-s") else "segmentation")
    weights = [e.weight for e in cfg.data.train]
    assert weights == ([1.0] * 6 if "background" in stage else [7.1, 6.4, 6.1, 11.1, 13.3, 7.5])
    assert all(e.shards and e.path is None for split in ("train", "val", "test") for e in cfg.data[split])


STAGE_NAMES = {"mask-decoder": "mask", "depth-decoder": "depth", "rgb-decoder": "rgb", "stage1": "stage1",
               "stage2": "stage2", "background": "background", "loci-s": "loci", "proposal": "proposal"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_name_their_stage_and_deepspeed_config(path):
    cfg = load_config(path)
    expect = [name for part, name in STAGE_NAMES.items() if part in path.stem]
    if path.stem.startswith("cater-stage"):  # the original Loci's stages (schema_v1)
        expect = ["cater" + path.stem[len("cater-stage"):]]
    assert [cfg.stage] == expect
    # upstream runs in fp32 without clipping (§17.1); the path is relative to the repository root
    assert cfg.deepspeed == "configs/deepspeed/fp32.json" and (ROOT / cfg.deepspeed).is_file()


def _is_subset(small, big) -> bool:
    """Every key of ``small`` is in ``big`` with an equal value (recursively)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and _is_subset(v, big[k]) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_is_subset, small, big))
    if type(small) is int and type(big) is float:  # number fields store JSON integers as floats
        return small == big
    return type(small) is type(big) and small == big


# --- errors ----------------------------------------------------------------------------------

def test_misspelled_key_names_path_and_suggests():
    data = minimal()
    data["model"]["encoder"] = {"chanels": 16}
    err = raises(data)
    assert err.key_path == "model.encoder.chanels" and err.suggestion == "channels"
    assert "model.encoder.chanels" in str(err) and "'channels'" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("where,key,expect", [
    ((), "learning_rte", "learning_rate"),
    (("model",), "num_slot", "num_slots"),
    (("model", "predictor", "gate"), "noise_levl", "noise_level"),
    (("kernels",), "backnd", "backend"),
])
def test_misspelled_keys_everywhere(where, key, expect):
    data = minimal()
    node = data
    for part in where:
        node = node.setdefault(part, {})
    node[key] = 1
    err = raises(data)
    assert err.key_path == ".".join(where + (key,)) and err.suggestion == expect


def test_misspelled_key_in_data_entry_names_the_index():
    data = minimal()
    data["data"] = {"train": [{"shards": "a-*.tar"}, {"shards": "b-*.tar", "wieght": 2.0}]}
    err = raises(data)
    assert err.key_path == "data.train.1.wieght" and err.suggestion == "weight"


def test_error_names_the_file(tmp_path):
    data = minimal()
    data["model"]["encodr"] = {}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"bad\.json: model\.encodr: unknown key; did you mean 'encoder'"):
        load_config(path)


@pytest.mark.parametrize("drop", ["model_path", "model", "model.num_slots", "model.input_size"])
def test_missing_required_key(drop):
    data = minimal()
    *parents, last = drop.split(".")
    node = data
    for p in parents:
        node = node[p]
    del node[last]
    err = raises(data)
    assert err.key_path == drop and "missing required key" in str(err)


@pytest.mark.parametrize("key,value,fragment", [
    ("model.batch_size", "4", "expected an integer >= 1, got str \"4\""),
    ("model.batch_size", 4.0, "expected an integer"),
    ("model.batch_size", True, "expected an integer"),
    ("model.batch_size", 0, ">= 1"),
    ("model.input_depth", 1, "expected true or false"),
    ("model.input_size", [64], "a list of 2 integers"),
    ("model.input_size.1", "64", "expected an integer"),
    ("learning_rate", "1e-4", "expected a number"),
    ("model.encoder", [32], "expected an object"),
    ("model.encoder.blocks", [1, 1, 3], "a list of 4 integers"),
    ("deepspeed", 3, "a non-empty string or null"),
    ("data.train", {"shards": "x"}, "a list of data entries"),
])
def test_wrong_type_names_key(key, value, fragment):
    data = minimal()
    data["model"]["encoder"] = {"blocks": [1, 1, 3, 2]}
    err = raises(data, overrides={key: value})
    assert err.key_path == key and fragment in str(err)


def test_choice_suggests_closest_option():
    err = raises(minimal(), overrides={"model.inference_mode": "segmentaton"})
    assert err.key_path == "model.inference_mode" and err.suggestion == "segmentation"
    err = raises(minimal(), overrides={"kernels.backend": "trition"})
    assert err.suggestion == "triton" and "auto" in str(err)


def test_compat_is_a_mapping_of_known_flags_to_bools():
    from loci_fast.model.compat import COMPAT_FLAGS

    names = sorted(COMPAT_FLAGS)
    cfg = load_config(minimal(), overrides={"model.compat": {names[0]: False, names[-1]: True}})
    assert cfg.model.compat == {names[0]: False, names[-1]: True}
    assert raises(minimal(), overrides={"model.compat.prioritize_noise": 0}).key_path == \
        "model.compat.prioritize_noise"
    assert raises(minimal(), overrides={"model.compat": ["prioritize_noise"]}).key_path == "model.compat"


@pytest.mark.parametrize("flag", ["prioritize_noise", "hyper_slices_from_start"])
def test_unknown_compat_flag_is_refused_with_the_closest_name(tmp_path, flag):
    import random

    chars = list(flag)  # a typo: two neighbouring letters swapped at a random place
    i = random.randrange(len(chars) - 1)
    while chars[i] == chars[i + 1]:
        i = random.randrange(len(chars) - 1)
    chars[i], chars[i + 1] = chars[i + 1], chars[i]
    typo = "".join(chars)
    err = raises(minimal(), overrides={f"model.compat.{typo}": False})
    assert err.key_path == f"model.compat.{typo}" and err.suggestion == flag
    assert f"did you mean {flag!r}" in str(err) and "unknown compat flag" in str(err)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**minimal(), "model": {**minimal()["model"], "compat": {"anything": True}}}))
    with pytest.raises(ConfigError, match="cfg.json: model.compat.anything: unknown compat flag"):
        load_config(path)


def test_data_entry_needs_exactly_one_source():
    assert raises(minimal(), overrides={"data.val": [{"weight": 1.0}]}).key_path == "data.val.0"
    both = [{"shards": "a-*.tar", "path": "a.hdf5"}]
    assert "exactly one" in str(raises(minimal(), overrides={"data.val": both}))


@pytest.mark.parametrize("overrides,key,fragment", [
    ({"model.gestalt_size": 32, "model.embedding.mask.channels": 32}, "model.gestalt_size",
     "embedding.mask.channels"),
    ({"model.input_size": [64, 80]}, "model.input_size.1", "multiple of 32"),
    ({"model.input_size": [32, 64]}, "model.input_size.0", ">= 64"),
    ({"model.encoder.channels": 24}, "model.encoder.channels", "multiple of 16"),
    ({"model.predictor.channels": 197}, "model.predictor.channels", ">= 3 * gestalt_size + 6 = 198"),
    ({"model.background.depth_context_size": 32}, "model.background.depth_context_size", "heads"),
    ({"pretrainer_iterations": 4}, "pretrainer_iterations", "<= 3"),
])
def test_cross_key_checks(overrides, key, fragment):
    err = raises(minimal(), overrides=overrides)
    assert err.key_path == key and fragment in str(err)


def test_cross_key_limits_are_inclusive():
    cfg = load_config(minimal(), overrides={"model.predictor.channels": 198, "model.input_size": [64, 64],
                                            "model.encoder.channels": 16, "model.background.latent_channels": 64,
                                            "pretrainer_iterations": 3, "model.embedding.mask.channels": 32,
                                            "model.encoder.blocks": [0, 0, 0, 0]})
    assert cfg.model.predictor.channels == 198


@pytest.mark.parametrize("stage", sorted(STAGE_VALUES))
def test_tiny_configs_match_their_stage_and_are_small(stage):
    full = load_config(ROOT / "configs" / f"{stage}.json")
    tiny = load_config(ROOT / "configs" / "tiny" / f"{stage}.json")
    same = ("pretraining_mode", "pretrainer_iterations")
    assert [tiny[k] for k in same] == [full[k] for k in same]
    assert (tiny.model.input_depth, tiny.model.inference_mode) == (full.model.input_depth, full.model.inference_mode)
    m = tiny.model
    assert max(m.input_size) <= 64 and m.batch_size <= 2 and m.gestalt_size <= 32
    assert m.encoder.channels <= 16 and m.encoder.hyper_channels <= 32 and m.predictor.channels <= 128
    assert tiny.num_workers == 0 and tiny.prefetch_factor is None


def test_legacy_config_is_rejected_with_explanation():
    legacy = {"model_path": "old", "datatype": "x", "model": {"level": 1, "num_objects": 4, "crop_size": [64, 64],
                                                            "batch_size": 8}}
    err = raises(legacy)
    assert "older Loci code base" in str(err) and "model.num_objects" in str(err)


def test_comments_duplicates_and_bad_json(tmp_path):
    text = json.dumps(minimal(), indent=1)
    text = "// a line comment\n" + text.replace('"t"', '"t // not a comment" /* block */', 1)
    (tmp_path / "c.json").write_text(text)
    assert load_config(tmp_path / "c.json").model_path == "t // not a comment"
    (tmp_path / "d.json").write_text('{"model_path": "a", "model_path": "b", "model": {}}')
    err = pytest.raises(ConfigError, load_config, tmp_path / "d.json").value
    assert err.key_path == "model_path" and "twice" in str(err)
    (tmp_path / "e.json").write_text('{"model_path": "a",}')
    with pytest.raises(ConfigError, match=r"e\.json: <root>: not valid JSON"):
        load_config(tmp_path / "e.json")


# --- nodes -----------------------------------------------------------------------------------

def test_attribute_item_in_get():
    cfg = load_config(minimal())
    assert cfg.model.num_slots == cfg["model"]["num_slots"] == 3
    assert "num_slots" in cfg.model and "nope" not in cfg.model
    assert cfg.model.get("nope", 7) == 7 and cfg.get("model").gestalt_size == 64
    assert cfg.model.input_size == [64, 96] and cfg.model.input_size == (64, 96)
    assert dict(**cfg.model.encoder) == {"channels": 32, "blocks": [1, 1, 3, 2], "hyper_channels": 256}
    with pytest.raises(AttributeError, match=r"model\.num_slot: no such key; did you mean 'num_slots'"):
        _ = cfg.model.num_slot
    with pytest.raises(KeyError, match="model.gestalt"):
        cfg["model"]["gestalt"]
    assert not hasattr(cfg.model, "nope")


def test_nodes_are_read_only():
    cfg = load_config(minimal())
    with pytest.raises(AttributeError, match="read-only"):
        cfg.model.batch_size = 4
    with pytest.raises(TypeError):
        cfg.model["batch_size"] = 4
    # to_dict hands out a copy: editing it leaves the config alone
    d = cfg.to_dict()
    d["model"]["input_size"].append(1)
    assert cfg.model.input_size == [64, 96]


def test_schema_keys_do_not_shadow_node_methods():
    reserved = set(dir(Config)) | set(dir(ConfigNode))

    def walk(section: Section, path: str):
        for key, field in section.fields.items():
            assert key not in reserved, f"{path}{key} would be shadowed by a method"
            kind = getattr(field.kind, "item", field.kind)
            if isinstance(kind, Section):
                walk(kind, f"{path}{key}.")
    walk(CONFIG, "")


def test_to_dict_is_input_plus_defaults():
    data = minimal()
    data["model"]["encoder"] = {"channels": 16}
    data["data"] = {"train": [{"shards": "s-*.tar", "weight": 2}]}
    cfg = load_config(data)
    out = cfg.to_dict()
    assert _is_subset(data, out)
    assert out["model"]["encoder"] == {"channels": 16, "blocks": [1, 1, 3, 2], "hyper_channels": 256}
    assert out["data"]["train"][0]["weight"] == 2.0 and out["data"]["val"] == []
    assert out["kernels"] == {"backend": "auto"} and out["deepspeed"] is None
    assert load_config(minimal(), overrides={"kernels": "triton"}).kernels.to_dict() == {"backend": "triton"}
    assert json.loads(cfg.to_json()) == out
    assert load_config(out) == cfg


def test_pickle_and_deepcopy():
    cfg = load_config(minimal(), overrides={"model.compat.prioritize_noise": False})
    for clone in (pickle.loads(pickle.dumps(cfg)), copy.deepcopy(cfg), pickle.loads(pickle.dumps(cfg.model))):
        assert clone.to_dict() == (cfg.to_dict() if isinstance(clone, Config) else cfg.model.to_dict())
    assert pickle.loads(pickle.dumps(cfg)).hash() == cfg.hash()


# --- hash ------------------------------------------------------------------------------------

def test_hash_is_stable_and_canonical(tmp_path):
    cfg = load_config(minimal())
    h = cfg.hash()
    assert len(h) == 64 and int(h, 16) >= 0
    # key order, formatting, ints written for floats and spelled-out defaults do not matter
    data = minimal()
    reordered = {"model": dict(reversed(list(data["model"].items()))), "model_path": "t",
                 "learning_rate": 0.0001, "epochs": 1000}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(reordered, indent=7))
    assert load_config(path).hash() == h
    assert load_config(minimal(), overrides={"model.object_permanence_strength": 1}).hash() == h
    # any value change changes it, the model hash only for model changes
    assert load_config(minimal(), overrides={"model.batch_size": 3}).hash() != h
    other = load_config(minimal(), overrides={"learning_rate": 0.5})
    assert other.hash() != h and other.model.hash() == cfg.model.hash()
    # and it is the same in a fresh interpreter (no dependence on hash seeds or ids)
    code = ("import json,sys; from loci_fast.config import load_config; "
            "print(load_config(json.loads(sys.argv[1])).hash())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(minimal())], capture_output=True, text=True,
                         cwd=ROOT, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == h


# --- overrides -------------------------------------------------------------------------------

def test_overrides():
    cfg = load_config(minimal(), overrides={"model.batch_size": 4, "model.encoder.channels": 48,
                                            "data.train": "shards/x-{000000..000003}.tar",
                                            "data.val": ["v-*.tar", {"path": "v.hdf5", "weight": 0.5}]})
    assert cfg.model.batch_size == 4 and cfg.model.encoder.channels == 48
    assert [e.shards for e in cfg.data.train] == ["shards/x-{000000..000003}.tar"]
    assert cfg.data.val[0].shards == "v-*.tar" and cfg.data.val[1].path == "v.hdf5"
    again = load_config(cfg.to_dict(), overrides={"data.val.1.weight": 3})
    assert again.data.val[1].weight == 3.0
    assert cfg.replace({"model.batch_size": 1}).model.batch_size == 1 and cfg.model.batch_size == 4
    # a loaded config is itself a valid source, overrides reaching into its lists included
    assert load_config(cfg, overrides={"data.val.1.weight": 2}).data.val[1].weight == 2.0


def test_override_errors_name_the_key():
    err = raises(minimal(), overrides={"model.batchsize": 4})
    assert err.key_path == "model.batchsize" and err.suggestion == "batch_size"
    assert raises(minimal(), overrides={"model.num_slots.x": 4}).key_path == "model.num_slots"
    assert raises(minimal(), overrides={"model.input_size.5": 4}).key_path == "model.input_size.5"
    assert raises(minimal(), overrides={"model..x": 4}).key_path == "model..x"


def test_parse_overrides():
    assert parse_overrides(["model.batch_size=4", "data.train=s/x-*.tar", "model.compat.a=false",
                            "model.input_size=[64, 64]"]) == {
        "model.batch_size": 4, "data.train": "s/x-*.tar", "model.compat.a": False, "model.input_size": [64, 64]}
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["model.batch_size"])


def test_input_is_not_mutated():
    data = minimal()
    before = copy.deepcopy(data)
    load_config(data, overrides={"model.encoder.channels": 48})
    assert data == before


def test_describe_defaults_lists_every_key():
    text = describe_defaults()
    cfg = load_config(minimal())

    def leaves(node, path=""):
        for k, v in node.items():
            if isinstance(v, ConfigNode) and k != "compat":
                yield from leaves(v, f"{path}{k}.")
            else:
                yield f"{path}{k}"
    for key in leaves(cfg):
        assert key in text, key
    assert "data.train[].shards" in text and "REQUIRED" in text


def test_command_line_validates_files(tmp_path, capsys):
    from loci_fast.config.__main__ import main

    good = ROOT / "configs" / "tiny" / "pretrain-mask-decoder.json"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**minimal(), "learning_rat": 1.0}))
    assert main([str(good), "--set", "model.batch_size=3"]) == 0
    out = capsys.readouterr().out
    assert load_config(good, overrides={"model.batch_size": 3}).hash()[:16] in out
    assert main([str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "learning_rat" in err and "'learning_rate'" in err
    assert main([]) == 0 and "model.encoder.hyper_channels" in capsys.readouterr().out
