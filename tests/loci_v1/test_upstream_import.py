"""``import-upstream --kind loci-v1``: upstream ``net*.pt`` files (model + five optimizer states) convert
strictly with the ``.module.`` and ``predictor.vae`` renames; pickled code is refused; a checkpoint of
upstream's own module (when LOCI_FAST_UPSTREAM_V1 is set) round-trips."""
import pytest
import torch
from safetensors.torch import load_file

from loci_fast.cli import main as cli_main
from loci_fast.config import load_config
from loci_fast.loci_v1 import LociV1
from loci_fast.loci_v1.tracker import CATER_CAMERA, CATER_ZERO_ELEVATION
from loci_fast.loci_v1.upstream import OPTIMIZERS, convert_state_dict, read_upstream_checkpoint
from tests.loci_v1.upstream_v1 import ROOT, Namespace, upstream_v1

CONFIG = "configs/tiny/cater-stage1.json"


def tiny_model() -> LociV1:
    cfg = load_config(CONFIG)
    return LociV1.from_config(cfg.model, teacher_forcing=cfg.teacher_forcing)


def randomised(gen) -> dict:
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in tiny_model().state_dict().items()}


def upstream_file(state: dict, path, *, wrap: bool = True, old_names: bool = False) -> None:
    """An upstream-style net.pt: keys as an older/DataParallel run saved them, five optimizer states."""
    model = {}
    for k, v in state.items():
        if old_names:
            k = k.replace("predictor.bottleneck", "predictor.vae")
        if wrap:
            first, rest = k.split(".", 1)
            k = f"{first}.module.{rest}"
        model[k] = v
    torch.save({"model": model, **optimizer_states(state)}, path)


MODULES = dict(zip(OPTIMIZERS, ("initial_states", "encoder", "decoder", "predictor", "background")))


def optimizer_states(state: dict) -> dict:
    """Upstream-shaped optimizer state dicts (Adam's step a tensor, RAdam's an int) for the parameters of
    ``state`` (a model state dict), every second parameter with a state, values from the weights."""
    names = [n for n, _ in tiny_model().named_parameters()]
    out = {}
    for opt, module in MODULES.items():
        mine = [n for n in names if n.startswith(module + ".")]
        entries = {i: {"step": torch.tensor(float(i + 1)) if opt == "optimizer_init" else i + 1,
                       "exp_avg": state[n] * 0.5, "exp_avg_sq": state[n] ** 2}
                   for i, n in enumerate(mine) if i % 2 == 0}
        out[opt] = {"state": entries, "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-16,
                                                        "params": list(range(len(mine)))}]}
    return out


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_import_round_trips_with_renames(tmp_path, gen, capsys, suffix):
    state = randomised(gen)
    ckpt, out = tmp_path / "net1.2.pt", tmp_path / f"o{suffix}"
    upstream_file(state, ckpt, old_names=True)
    assert cli_main(["import-upstream", str(ckpt), "--config", CONFIG, "--kind", "loci-v1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    got = load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    assert sorted(got) == sorted(state)
    for k in state:
        assert torch.equal(got[k], state[k]), k
    tiny_model().load_state_dict(got, strict=True)
    if suffix == ".pt":
        assert "optimizer states not converted" in printed
        return
    # the five optimizer states, by parameter name, beside the weights
    flat = load_file(tmp_path / "o.optimizer.safetensors")
    names = [n for n, _ in tiny_model().named_parameters()]
    expected = [n for module in MODULES.values() for i, n in enumerate(x for x in names if x.startswith(module + "."))
                if i % 2 == 0]
    assert sorted(k.rsplit("/", 1)[0] for k in flat if k.endswith("/step")) == sorted(expected)
    for n in expected:
        assert torch.equal(flat[f"{n}/exp_avg"], state[n] * 0.5) and torch.equal(flat[f"{n}/exp_avg_sq"], state[n] ** 2)
    assert "o.optimizer.safetensors" in printed


def test_read_gives_the_model_and_the_five_optimizers(tmp_path, gen):
    ckpt = tmp_path / "net.pt"
    upstream_file(randomised(gen), ckpt, wrap=False)
    model, optim = read_upstream_checkpoint(str(ckpt))
    assert sorted(optim) == sorted(OPTIMIZERS) and optim["optimizer_init"]["param_groups"][0]["eps"] == 1e-16
    assert "predictor.bottleneck.1.layers.1.weight" in model


def test_strict_conversion_names_missing_extra_and_misshaped_keys(gen):
    state = randomised(gen)
    model = tiny_model()
    broken = dict(state)
    broken.pop("decoder.mask_alpha")
    broken["encoder.extra"] = torch.zeros(1)
    broken["initial_states.gestalt_mean"] = torch.zeros(1, 5)
    with pytest.raises(ValueError) as info:
        convert_state_dict(broken, model=model)
    text = str(info.value)
    assert "decoder.mask_alpha" in text and "encoder.extra" in text and "initial_states.gestalt_mean" in text


class _Pickled:
    """An object torch.load(weights_only=True) must refuse."""


def test_pickled_code_is_refused(tmp_path, gen, capsys):
    ckpt, out = tmp_path / "evil.pt", tmp_path / "o.pt"
    torch.save({"model": randomised(gen), "optimizer_init": _Pickled()}, ckpt)
    code = cli_main(["import-upstream", str(ckpt), "--config", CONFIG, "--kind", "loci-v1", "--out", str(out)])
    assert code == 1 and "weights_only=True" in capsys.readouterr().err
    assert not out.exists()


def test_a_loci_s_checkpoint_is_refused(tmp_path, capsys):
    ckpt, out = tmp_path / "net.pt", tmp_path / "o.pt"
    torch.save({"model": {"encoder.stem.alpha": torch.ones(1)}}, ckpt)
    code = cli_main(["import-upstream", str(ckpt), "--config", CONFIG, "--kind", "loci-v1", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "missing" in err and "encoder.stem.alpha" in err


@pytest.mark.skipif(not ROOT, reason="set LOCI_FAST_UPSTREAM_V1 to an upstream Loci checkout (f5a7023)")
def test_checkpoint_of_upstreams_own_module(tmp_path, gen, capsys):
    """A net.pt saved the way upstream's training script saves it, from upstream's own Loci (with RAdam/Adam
    optimizer states), converts through the command to exactly upstream's tensors."""
    cfg = load_config(CONFIG)
    with upstream_v1() as imp:
        net = imp("model.loci").Loci(Namespace(cfg.model.to_dict()), camera_view_matrix=CATER_CAMERA,
                                     zero_elevation=CATER_ZERO_ELEVATION, teacher_forcing=2)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        radam = imp("utils.optimizers").RAdam
        opts = {"optimizer_init": torch.optim.Adam(net.initial_states.parameters(), lr=3e-3),
                "optimizer_encoder": radam(net.encoder.parameters(), lr=1e-4),
                "optimizer_decoder": radam(net.decoder.parameters(), lr=1e-4),
                "optimizer_predictor": radam(net.predictor.parameters(), lr=1e-4),
                "optimizer_background": radam(net.background.parameters(), lr=1e-4)}
        for _ in range(2):  # real optimizer states: two steps on random gradients (one parameter without)
            for p in net.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            net.background.local_bias.grad = None
            for o in opts.values():
                o.step()
        state = {name: o.state_dict() for name, o in opts.items()}
        state["model"] = net.state_dict()
        by_name = {n: opts[next(k for k, m in MODULES.items() if n.startswith(m + "."))].state[p]
                   for n, p in net.named_parameters() if n != "background.local_bias"}
        ckpt, out = tmp_path / "net0.pt", tmp_path / "o.safetensors"
        torch.save(state, ckpt)
        assert cli_main(["import-upstream", str(ckpt), "--config", CONFIG, "--kind", "loci-v1",
                         "--out", str(out)]) == 0
        got = load_file(out)
        theirs = net.state_dict()
    assert set(got) == set(theirs)
    for k, v in theirs.items():
        assert torch.equal(got[k], v), k
    # the optimizer states land on the parameters upstream's optimizers hold them for
    flat = load_file(tmp_path / "o.optimizer.safetensors")
    assert sorted(k.rsplit("/", 1)[0] for k in flat if k.endswith("/step")) == sorted(by_name)
    for n, st in by_name.items():
        assert int(flat[f"{n}/step"]) == int(float(st["step"])) == 2, n
        assert torch.equal(flat[f"{n}/exp_avg"], st["exp_avg"]) and torch.equal(flat[f"{n}/exp_avg_sq"],
                                                                               st["exp_avg_sq"]), n
