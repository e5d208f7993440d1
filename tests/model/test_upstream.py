"""Upstream checkpoints: the key conversion round-trips and names what it cannot place, the
``import-upstream`` command, and (with LOCI_FAST_UPSTREAM=<checkout of CognitiveModeling/
Loci-Segmented>) output parity with upstream's LociPretrainer given the same weights and inputs."""
import copy
import os
import re
import sys
import types

import pytest
import torch

from loci_fast.cli import main as cli_main
from loci_fast.model import LociPretrainer, convert_state_dict
from tests.model.test_pretrainer import TINY, batch

G = TINY["gestalt_size"]


def to_upstream_layout(ours: dict) -> dict:
    """Our state dict in upstream's key layout, with the keys upstream has and we drop (written
    independently of the converter, from reference §15.1 / §24.11b and upstream's module names)."""
    up = {}
    for key, value in ours.items():
        new = key
        m = re.match(r"(mask|depth|rgb)_pretrainer\.encoder\.(embedding|encoder|pool)\.(.*)", key)
        if m:
            modality, part, rest = m.groups()
            new = {"embedding": f"{modality}_pretrainer.{modality}_embedding.{rest}",
                   "encoder": f"{modality}_pretrainer.encoder.{rest}",
                   "pool": f"{modality}_pretrainer.pool.0.{rest}"}[part]
        elif re.match(r"(decoder\.to_(depth|rgb)|(depth|rgb)_pretrainer\.decoder)\.layers\.0\.(weight|bias)$", key):
            new = key.replace("layers.0.", "layers.0.linear.")
            value = value.flatten(1) if value.dim() == 4 else value
        elif key == "decaying_mse.num_updates":
            new, value = "decying_mse.num_updates", value.float()  # upstream counts in float buffers
        elif key == "init_counter.num_updates":
            new, value = "init_counter", value.float().reshape(1)
        elif key.endswith(".num_updates"):
            value = value.float()
        up[new] = value.clone()
    for prefix in ("decoder.to_depth", "decoder.to_rgb", "depth_pretrainer.decoder", "rgb_pretrainer.decoder"):
        up[f"{prefix}.position_embedding.legacy"] = torch.tensor(0)
    for name in ("mask_pretrainer.pool.0", "depth_pretrainer.pool.0", "rgb_pretrainer.pool.0", "encoder.preprocess",
                 "encoder.mask_gestalt_pooling.0", "encoder.depth_gestalt_pooling.0",
                 "encoder.depth_scale_pooling.0", "encoder.rgb_gestalt_pooling.0"):
        up[f"{name}.legacy"] = torch.tensor(0)
    up["gestalt_mean"] = torch.zeros(1, 3 * G + 1)
    up["gestalt_std"] = torch.ones(1, 3 * G + 1)
    return up


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = LociPretrainer(TINY)
    with torch.no_grad():  # distinct values everywhere, counters included
        for t in m.state_dict().values():
            t.copy_(torch.randn_like(t) if t.is_floating_point() else torch.randint_like(t, 0, 9999))
    return m


@pytest.mark.parametrize("prefix", ["", "net."])
def test_round_trip_loads_strict_and_keeps_every_tensor(model, prefix):
    up = {prefix + k: v for k, v in to_upstream_layout(model.state_dict()).items()}
    converted = convert_state_dict(up, kind="pretrainer", model=model)
    fresh = LociPretrainer(TINY)
    fresh.load_state_dict(converted, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_unplaceable_and_legacy_keys_are_named(model):
    up = to_upstream_layout(model.state_dict())
    bad = dict(up, **{"encoder.stem.bogus": torch.zeros(1), "something_else": torch.zeros(1)})
    with pytest.raises(ValueError) as err:
        convert_state_dict(bad)
    assert "encoder.stem.bogus" not in str(err.value)  # under encoder.: placed; the model check catches it
    assert "something_else" in str(err.value)
    with pytest.raises(ValueError, match=r"no place in the model:\n  encoder\.stem\.bogus"):
        convert_state_dict(dict(up, **{"encoder.stem.bogus": torch.zeros(1)}), model=model)
    on = dict(up, **{"encoder.preprocess.legacy": torch.tensor(1)})
    with pytest.raises(ValueError, match=r"legacy.*\n.*encoder\.preprocess\.legacy = 1"):
        convert_state_dict(on)
    missing = {k: v for k, v in up.items() if not k.startswith("decoder.to_rgb.rgb_upscale")}
    with pytest.raises(ValueError, match=r"missing from the checkpoint:(\n  .*)*decoder\.to_rgb\.rgb_upscale\.0\.weight2"):
        convert_state_dict(missing, model=model)
    other = LociPretrainer({**TINY, "gestalt_size": 64})
    with pytest.raises(ValueError, match="wrong shape"):
        convert_state_dict(up, model=other)
    with pytest.raises(ValueError, match="unknown checkpoint kind 'video'"):
        convert_state_dict(up, kind="video")


def _tiny_config_file(tmp_path):
    import json
    cfg = json.load(open("configs/tiny/pretrain-encoder-decoder-stage2.json"))
    cfg["model"].update(copy.deepcopy({k: TINY[k] for k in ("gestalt_size", "embedding", "encoder", "decoder")}))
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.mark.parametrize("out_name", ["out.safetensors", "out.pt"])
def test_import_upstream_command(model, tmp_path, capsys, out_name):
    ckpt = tmp_path / "last.ckpt"
    up = {"net." + k: v for k, v in to_upstream_layout(model.state_dict()).items()}
    torch.save({"epoch": 3, "global_step": 1200, "state_dict": up, "optimizer_states": [],
                "pytorch-lightning_version": "2.0.0"}, ckpt)
    out = tmp_path / out_name
    assert cli_main(["import-upstream", str(ckpt), "--config", _tiny_config_file(tmp_path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    if out_name.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(str(out))
    else:
        state = torch.load(out, weights_only=True)
    fresh = LociPretrainer(TINY)
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())


class _Pickled:  # stands for any class a weights_only load must refuse
    pass


def test_import_upstream_refuses_arbitrary_pickles(tmp_path, capsys):
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"std": torch.zeros(1)}, "hyper_parameters": _Pickled()}, ckpt)
    code = cli_main(["import-upstream", str(ckpt), "--config", _tiny_config_file(tmp_path), "--out",
                     str(tmp_path / "o.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "weights_only=True" in err and "unpickle" in err
    assert not (tmp_path / "o.pt").exists()
    code = cli_main(["import-upstream", str(tmp_path / "nope.ckpt"), "--config", _tiny_config_file(tmp_path),
                     "--out", str(tmp_path / "o.pt")])
    assert code == 1 and "no such checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- parity with upstream

UPSTREAM = os.environ.get("LOCI_FAST_UPSTREAM")
_STUBS = ("torchvision", "torchvision.transforms", "cv2", "pytorch_lightning", "pytorch_lightning.callbacks",
          "jsmin", "scipy", "scipy.optimize", "skimage", "skimage.measure")


_STUBBED: list[str] = []  # names _import_upstream stubbed, removed again by upstream_pair


def _forget_upstream() -> None:
    """Undo _import_upstream: its stubs (a later test must not decode frames with a stub cv2), upstream's
    packages and its sys.path entry."""
    for name in [k for k in sys.modules if k in _STUBBED or k.split(".")[0] in ("model", "nn", "utils")]:
        del sys.modules[name]
    _STUBBED.clear()
    while UPSTREAM in sys.path:
        sys.path.remove(UPSTREAM)


def _import_upstream():
    """Import upstream's LociPretrainer from the checkout, stubbing the imports §23 lists as unused."""
    class Stub(types.ModuleType):  # any attribute is a do-nothing class (base classes, decorators' targets)
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {"__init__": lambda self, *a, **k: None})

    for name in _STUBS:
        try:
            __import__(name)
        except ImportError:
            stub = Stub(name)
            stub.__path__ = []  # importable as a package, so submodule stubs resolve
            sys.modules[name] = stub
            _STUBBED.append(name)
    sys.path.insert(0, UPSTREAM)
    from model.pretrainer import LociPretrainer as Upstream
    from nn.decoder import LociDecoder as UpDecoder
    from nn.encoder import LociEncoder as UpEncoder
    from utils.configuration import Dict
    return Upstream, UpDecoder, UpEncoder, Dict


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ours, ref = torch.as_tensor(ours).double().reshape(-1), torch.as_tensor(ref).double().reshape(-1)
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


@pytest.fixture(scope="module")
def upstream_pair():
    if not UPSTREAM:
        pytest.skip("set LOCI_FAST_UPSTREAM to a checkout of CognitiveModeling/Loci-Segmented to compare")
    Upstream, UpDecoder, UpEncoder, Dict = _import_upstream()
    torch.manual_seed(0)
    up = Upstream(Dict(copy.deepcopy(TINY)), 1)
    with torch.no_grad():  # let the hypernetwork and priority head matter
        for name, p in up.named_parameters():
            if name.endswith("alpha") or "priority_encoder" in name:
                p.add_(0.05 * torch.randn_like(p))
    ours = LociPretrainer(TINY)
    state = {"net." + k: v for k, v in up.state_dict().items()}
    ours.load_state_dict(convert_state_dict(state, model=ours), strict=True)
    yield up.eval(), ours.eval(), state, (UpDecoder, UpEncoder)
    _forget_upstream()


OUTPUT_KEYS = ("mask_loss", "mean_iou", "rgb_loss", "depth_loss", "position_loss", "z_loss", "rgb_l1", "depth_l1",
               "rgb_ssim", "depth_ssim", "mask", "rgb", "depth", "position", "gestalt")


@pytest.mark.parametrize("mode,iterations", [("mask", 0), ("depth", 0), ("rgb", 0), ("embedding", 0), ("all", 0),
                                             ("all", 3)])
def test_parity_with_upstream_pretrainer(upstream_pair, gen, mode, iterations):
    up, ours, _, _ = upstream_pair
    rgb, depth, mask = batch(gen, b=2)
    with torch.no_grad():
        torch.manual_seed(5)  # same draws for the random initial position inside the mask
        ref = up(rgb, depth, mask, iterations=iterations, mode=mode)
        torch.manual_seed(5)
        got = ours(rgb, depth, mask, iterations, mode)
    errors = {k: _rel(got[k], ref[k]) for k in OUTPUT_KEYS
              if torch.is_tensor(ref[k]) and ref[k].is_floating_point()}
    assert errors and max(errors.values()) < 1e-4, errors


def test_parity_with_upstream_decoder_and_encoder(upstream_pair, gen):
    up, ours, state, (UpDecoder, UpEncoder) = upstream_pair
    o, b, (h, w) = 3, 2, TINY["input_size"]
    converted = convert_state_dict(state)
    cfg = {**TINY, "num_slots": o}
    from loci_fast.model import LociDecoder, LociEncoder
    dec = LociDecoder.from_config(cfg).eval()
    dec.load_state_dict({k[8:]: v for k, v in converted.items() if k.startswith("decoder.")})
    ref_dec = UpDecoder([h // 16, w // 16], G, o, copy.deepcopy(up.decoder.to_mask),
                        copy.deepcopy(up.decoder.to_depth), copy.deepcopy(up.decoder.to_rgb)).eval()
    enc = LociEncoder.from_config(cfg).eval()
    enc.load_state_dict({k[8:]: v for k, v in converted.items() if k.startswith("encoder.")})
    e = TINY["encoder"]
    ref_enc = UpEncoder(input_size=[h, w], latent_size=[h // 16, w // 16], num_slots=o, base_channels=e["channels"],
                        hyper_channels=e["hyper_channels"], blocks=e["blocks"], gestalt_size=G, batch_size=b)
    ref_enc.load_state_dict(up.encoder.state_dict())
    ref_enc.eval()

    pos = torch.cat([torch.rand(b, o, 2, generator=gen) * 1.6 - 0.8, torch.rand(b, o, 1, generator=gen),
                     torch.rand(b, o, 1, generator=gen) * 0.3], -1).reshape(b, o * 4)
    ges = (torch.rand(b, o * (3 * G + 1), generator=gen) > 0.5).float()
    pri = torch.randn(b, o, generator=gen) * 0.05
    with torch.no_grad():
        torch.manual_seed(9)  # the same priority noise draw on both sides
        ref = ref_dec(pos, ges, pri, compute_raw=True)
        torch.manual_seed(9)
        got = dec(pos, ges, pri, compute_raw=True)
        errors = {n: _rel(g, r) for n, g, r in zip(("mask", "rgb", "depth", "mask_raw", "depth_raw"), got, ref)}

        rgb, depth, _ = batch(gen, b=b, size=h)
        args = dict(input_rgb=rgb, input_depth=depth, error_last=torch.rand(b, 1, h, w, generator=gen),
                    mask=torch.softmax(torch.randn(b, o + 1, h, w, generator=gen), 1),
                    mask_raw=torch.rand(b, o, h, w, generator=gen),
                    slot_rgb=torch.rand(b, 3 * (o + 1), h, w, generator=gen),
                    slot_depth=torch.rand(b, o, h, w, generator=gen), position=pos, gestalt=ges,
                    slot_reset=torch.ones(b, o), use_hyper_weights=True)
        ref = ref_enc(slot_flow=torch.zeros(b, 2 * o, h, w), **args)
        got = enc(**args)
        errors.update({f"encoder {n}": _rel(g, r) for n, g, r in zip(("position", "gestalt", "priority"), got, ref)})
    assert max(errors.values()) < 1e-4, errors


def test_parity_of_training_losses_and_gradients(upstream_pair, gen):
    """Train mode (Binarize noise on) with equal seeds: the summed loss and every gradient agree."""
    up, ours, _, _ = upstream_pair
    up, ours = copy.deepcopy(up).train(), copy.deepcopy(ours).train()
    rgb, depth, mask = batch(gen, b=2)
    for mode, iterations in (("rgb", 0), ("all", 0), ("all", 3)):
        up.zero_grad()
        ours.zero_grad()
        torch.manual_seed(7)
        ref = up(rgb, depth, mask, iterations=iterations, mode=mode)
        ref_loss = sum(ref[k] for k in ("mask_loss", "rgb_loss", "depth_loss", "position_loss", "gestalt_loss",
                                        "z_loss"))
        ref_loss.backward()
        torch.manual_seed(7)
        got = ours(rgb, depth, mask, iterations, mode)
        got["loss"].backward()
        assert _rel(got["loss"].detach(), ref_loss.detach()) < 1e-5
        params = dict(up.named_parameters())
        grads = {k: (params[k].grad if params[k].grad is not None else torch.zeros_like(params[k]))
                 for k in params if not k.startswith("gestalt_")}
        grads.update({k: v for k, v in up.state_dict().items() if k not in params})  # buffers, to convert
        ref_grads = convert_state_dict(grads)
        errors = {n: _rel(p.grad, ref_grads[n]) for n, p in ours.named_parameters() if p.grad is not None}
        assert len(errors) > 20 and max(errors.values()) < 1e-4, (mode, max(errors.items(), key=lambda kv: kv[1]))
