"""``import-upstream --kind background``: upstream's background Lightning checkpoints convert strictly,
round-trip through the command (safetensors and torch files), and pickled code is refused."""
import os
import re

import pytest
import torch

from loci_fast.cli import main as cli_main
from loci_fast.config import load_config
from loci_fast.model.background import BackgroundPretrainer
from loci_fast.model.upstream import convert_state_dict

CONFIGS = {False: "configs/tiny/pretrain-background.json", True: "configs/tiny/pretrain-background-depth.json"}


def to_upstream_layout(ours: dict) -> dict:
    """Our BackgroundPretrainer state dict in upstream's LociBackgroundModule layout, written from
    upstream's module names (nn/background.py, nn/vit.py), independently of the converter."""
    up = {}
    for key, value in ours.items():
        new = key
        new = re.sub(r"^net\.uncertainty_estimation\.unet\.", "net.uncertainty_estimation.1.", new)
        new = re.sub(r"^net\.(base_encoder\.0|motion_encoder|rgb_decoder)\.to_patches\.", r"net.\1.to_patches.0.", new)
        new = new.replace("net.rgb_decoder.depth_embedding.", "net.rgb_decoder.depth_embedding.1.")
        new = new.replace("net.rgb_decoder.preprocess.", "net.rgb_decoder.preprocess.0.")
        up[new] = value.float() if key == "context_loss.num_updates" else value.clone()
    return up


def randomised(depth: bool) -> BackgroundPretrainer:
    torch.manual_seed(0)
    m = BackgroundPretrainer.from_config(load_config(CONFIGS[depth])["model"])
    with torch.no_grad():  # distinct values everywhere, the counter included
        for t in m.state_dict().values():
            t.copy_(torch.randn_like(t) if t.is_floating_point() else torch.randint_like(t, 0, 9999))
    return m


def equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert torch.equal(b[k], v), k


@pytest.mark.parametrize("depth", [False, True])
def test_round_trip_strict(depth):
    model = randomised(depth)
    up = to_upstream_layout(model.state_dict())
    assert up["context_loss.num_updates"].dtype == torch.float32
    fresh = BackgroundPretrainer.from_config(load_config(CONFIGS[depth])["model"])
    fresh.load_state_dict(convert_state_dict(up, kind="background", model=fresh), strict=True)
    equal_states(model.state_dict(), fresh.state_dict())
    # a bare UncertantyBackground state dict (no Lightning wrapper): the counter starts at 0
    bare = {k[len("net."):]: v for k, v in up.items() if k.startswith("net.")}
    conv = convert_state_dict(bare, kind="background", model=fresh)
    assert int(conv["context_loss.num_updates"]) == 0


def test_unplaced_and_mismatched_keys_are_named():
    model = randomised(False)
    up = to_upstream_layout(model.state_dict())
    with pytest.raises(ValueError, match=r"not part of an upstream LociBackgroundModule(.|\n)*net\.bogus\.weight"):
        convert_state_dict(dict(up, **{"net.bogus.weight": torch.zeros(1)}), kind="background")
    missing = {k: v for k, v in up.items() if "motion_encoder.to_patches" not in k}
    with pytest.raises(ValueError, match=r"missing from the checkpoint:(\n  .*)*motion_encoder\.to_patches\.weight1"):
        convert_state_dict(missing, kind="background", model=model)
    other = BackgroundPretrainer.from_config(load_config(CONFIGS[True])["model"])  # 4 input channels
    with pytest.raises(ValueError, match="wrong shape"):
        convert_state_dict(up, kind="background", model=other)


@pytest.mark.parametrize("out_name", ["out.safetensors", "out.pt"])
def test_import_upstream_command(tmp_path, capsys, out_name):
    model = randomised(False)
    ckpt = tmp_path / "bg.ckpt"
    torch.save({"epoch": 2, "global_step": 900, "state_dict": to_upstream_layout(model.state_dict()),
                "optimizer_states": [], "pytorch-lightning_version": "2.0.0"}, ckpt)
    out = tmp_path / out_name
    args = ["import-upstream", str(ckpt), "--config", CONFIGS[False], "--kind", "background", "--out", str(out)]
    assert cli_main(args) == 0
    assert "kind background" in capsys.readouterr().out
    if out_name.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(str(out))
    else:
        state = torch.load(out, weights_only=True)
    fresh = BackgroundPretrainer.from_config(load_config(CONFIGS[False])["model"])
    fresh.load_state_dict(state, strict=True)
    equal_states(model.state_dict(), fresh.state_dict())


class _Pickled:  # stands for any class a weights_only load must refuse
    pass


def test_import_upstream_refuses_pickled_code(tmp_path, capsys):
    ckpt = tmp_path / "evil.ckpt"
    state = to_upstream_layout(randomised(False).state_dict())
    torch.save({"state_dict": state, "hyper_parameters": _Pickled()}, ckpt)
    out = tmp_path / "o.pt"
    code = cli_main(["import-upstream", str(ckpt), "--config", CONFIGS[False], "--kind", "background", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "weights_only=True" in err
    assert not out.exists()


UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")


@pytest.mark.skipif(not UPSTREAM, reason="set LOCI_FAST_UPSTREAM to an upstream checkout")
@pytest.mark.parametrize("depth", [False, True])
def test_checkpoint_of_upstreams_own_module(tmp_path, capsys, depth):
    """A Lightning-style checkpoint of upstream's LociBackgroundModule itself converts through the
    command, and every tensor lands where the independent layout map says."""
    from tests.model.test_background import upstream_background, upstream_cfg

    model_cfg = load_config(CONFIGS[depth])["model"]
    section = {"input_depth": depth, "background": dict(model_cfg["background"])}
    with upstream_background(UPSTREAM) as Upstream:
        up = Upstream(upstream_cfg(section))
        with torch.no_grad():
            up.context_loss.num_updates.fill_(321.0)
        ckpt = tmp_path / "bg.ckpt"
        torch.save({"state_dict": up.state_dict(), "global_step": 5}, ckpt)
        theirs = {k: v.clone() for k, v in up.state_dict().items()}
    out = tmp_path / "bg.safetensors"
    assert cli_main(["import-upstream", str(ckpt), "--config", CONFIGS[depth], "--kind", "background",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file
    ours = BackgroundPretrainer.from_config(model_cfg)
    ours.load_state_dict(load_file(str(out)), strict=True)
    assert to_upstream_layout(ours.state_dict()).keys() == theirs.keys()
    for k, v in to_upstream_layout(ours.state_dict()).items():
        assert torch.equal(v, theirs[k]), k


def test_imported_background_initialises_a_background_run(tmp_path, capsys):
    """The converted file names its stage, so ``--init-from`` loads it whole into a background run."""
    from loci_fast.train.handover import init_from
    from loci_fast.train.stages import get_stage

    model = randomised(True)
    ckpt = tmp_path / "bg.ckpt"
    torch.save({"state_dict": to_upstream_layout(model.state_dict())}, ckpt)
    out = tmp_path / "bg.safetensors"
    assert cli_main(["import-upstream", str(ckpt), "--config", CONFIGS[True], "--kind", "background",
                     "--out", str(out)]) == 0
    capsys.readouterr()
    fresh = BackgroundPretrainer.from_config(load_config(CONFIGS[True])["model"])
    report = init_from(fresh, get_stage("background"), [str(out)])
    assert "stage background" in report[0] and report[-1].startswith(f"init-from: {len(model.state_dict())} of")
    equal_states(model.state_dict(), fresh.state_dict())
