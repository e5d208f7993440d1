"""Each object stage trains exactly the parameters its loss reaches.

DeepSpeed gives a trainable parameter without a gradient a zero gradient, and Ranger would then
still decay it; so a stage must not list parameters its forward pass never uses.
"""
import pytest
import torch

from loci_fast.config import load_config
from loci_fast.model.pretrainer import LociPretrainer
from loci_fast.train.stages import get_stage

CONFIGS = {"mask": "pretrain-mask-decoder", "depth": "pretrain-depth-decoder", "rgb": "pretrain-rgb-decoder",
           "stage1": "pretrain-encoder-decoder-stage1", "stage2": "pretrain-encoder-decoder-stage2"}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_trainable_parameter_gets_a_gradient(name, gen):
    cfg = load_config(f"configs/tiny/{CONFIGS[name]}.json")
    stage = get_stage(name)
    torch.manual_seed(0)
    model = LociPretrainer(cfg["model"])
    b, (h, w) = 2, cfg["model"]["input_size"]
    mask = torch.zeros(b, 1, h, w)
    mask[:, :, h // 4:h // 2, w // 3:3 * w // 4] = 1
    out = stage.forward(model, {"rgb": torch.rand(b, 3, h, w, generator=gen),
                                "depth": torch.rand(b, 1, h, w, generator=gen) + 1, "mask": mask})
    out.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad and stage.trainable(n)}
    assert trained
    assert sorted(n for n, p in model.named_parameters() if n in trained and p.grad is None) == []
    hyper = {n for n in trained if n.startswith("encoder.hyper_weights.")}
    # Stage 2 runs the hypernetwork from its second pass on; stage 1 never does.
    assert bool(hyper) == (name == "stage2")
