"""``import-upstream --kind proposal``: round trips (safetensors with the stage named, torch files
loadable with weights_only=True), refusal of pickled code, of other checkpoint kinds and of a config
that does not fit; with LOCI_FAST_UPSTREAM, a checkpoint of upstream's own LociProposal converts
into a model that gives upstream's outputs."""
import json

import pytest
import torch

from loci_fast.cli import main as cli_main
from loci_fast.model.proposal import LociProposal
from loci_fast.model.upstream_proposal import convert_proposal_state_dict
from tests.model.test_proposal import UPSTREAM, assert_rel, inputs, needs_upstream, upstream_proposal

CONFIG = "configs/tiny/pretrain-proposal.json"


def tiny_model(seed: int = 0) -> LociProposal:
    from loci_fast.config import load_config

    torch.manual_seed(seed)
    return LociProposal.from_config(load_config(CONFIG)["model"])


def upstream_layout(state: dict) -> dict:
    return {"net." + k.replace("to_position", "to_possition"): v for k, v in state.items()}


def lightning_file(path, state: dict) -> None:
    torch.save({"epoch": 1, "global_step": 100, "state_dict": state, "optimizer_states": [],
                "pytorch-lightning_version": "2.0.0"}, path)


def import_cmd(ckpt, out, config=CONFIG) -> int:
    return cli_main(["import-upstream", str(ckpt), "--kind", "proposal", "--config", str(config), "--out", str(out)])


@pytest.mark.parametrize("out_name", ["out.safetensors", "out.pt"])
def test_round_trip(tmp_path, capsys, out_name):
    model = tiny_model(1)
    lightning_file(tmp_path / "last.ckpt", upstream_layout(model.state_dict()))
    out = tmp_path / out_name
    assert import_cmd(tmp_path / "last.ckpt", out) == 0
    assert "kind proposal" in capsys.readouterr().out
    if out_name.endswith(".safetensors"):
        from loci_fast.train.export import read_weights

        state, meta = read_weights(out)
        assert meta["stage"] == "proposal"  # --init-from loads it one-to-one into a proposal run
    else:
        state = torch.load(out, weights_only=True)
    fresh = tiny_model(2)
    fresh.load_state_dict(state, strict=True)
    assert fresh.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


class _Pickled:  # stands for any class a weights_only load must refuse
    pass


def test_pickled_code_is_refused(tmp_path, capsys):
    state = upstream_layout(tiny_model().state_dict())
    torch.save({"state_dict": state, "hyper_parameters": _Pickled()}, tmp_path / "evil.ckpt")
    assert import_cmd(tmp_path / "evil.ckpt", tmp_path / "o.safetensors") == 1
    err = capsys.readouterr().err
    assert "weights_only=True" in err and "unpickle" in err
    assert not (tmp_path / "o.safetensors").exists()


def test_other_kinds_and_configs_are_refused(tmp_path, capsys):
    state = upstream_layout(tiny_model().state_dict())
    other = dict(state, **{"net.encoder.stem.weight": torch.zeros(3)})  # a key of another model
    lightning_file(tmp_path / "other.ckpt", other)
    assert import_cmd(tmp_path / "other.ckpt", tmp_path / "o.pt") == 1
    assert "not part of an upstream LociProposal" in capsys.readouterr().err
    cfg = json.load(open(CONFIG))
    cfg["model"]["position_proposal"]["base_channels"] = 16
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    lightning_file(tmp_path / "ok.ckpt", state)
    assert import_cmd(tmp_path / "ok.ckpt", tmp_path / "o.pt", tmp_path / "cfg.json") == 1
    assert "shapes differ" in capsys.readouterr().err
    missing = {k: v for k, v in state.items() if "hyper_network.5" not in k}
    with pytest.raises(ValueError, match="missing: position_estimator.hyper_network.5"):
        convert_proposal_state_dict(missing, model=tiny_model())
    assert not (tmp_path / "o.pt").exists()


@needs_upstream
def test_checkpoint_of_upstreams_own_module(tmp_path, gen):
    """Upstream's LociProposal (its own initialisation) -> Lightning file -> import -> our model gives
    upstream's outputs."""
    with upstream_proposal(UPSTREAM) as up:
        torch.manual_seed(4)
        theirs = up.LociProposal((64, 64), 4, [1, 1, 1, 1], [1, 1, 1, 1], 8, depth_input=False)
        lightning_file(tmp_path / "up.ckpt", {"net." + k: v for k, v in theirs.state_dict().items()})
        assert import_cmd(tmp_path / "up.ckpt", tmp_path / "p.safetensors") == 0
        from loci_fast.train.export import read_weights

        state, _ = read_weights(tmp_path / "p.safetensors")
        ours = tiny_model(5)
        ours.load_state_dict(state, strict=True)
        masks, depth, rgb = inputs(gen)
        ref, out = theirs.train()(masks, depth, rgb), ours(masks, depth, rgb)
        for key in ("regularizer_loss", "mask_loss", "iou", "softmask"):
            assert_rel(out[key], ref[key], 1e-5, key)
