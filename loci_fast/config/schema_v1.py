"""The config schema of the original Loci (upstream CognitiveModeling/Loci f5a7023, reference loci.md §7).

Upstream's ``model/cater*.json`` validate unchanged and select this kind (``kind`` is then "loci-v1");
a file can also say ``"kind": "loci-v1"``. Defaults are upstream ``model/cater.json``'s. Our own keys:
``kind``, ``data`` (webdataset shards), ``seed``, ``stage``, ``deepspeed``, ``kernels``, ``model.compat``
and ``model.tracker``. Settings upstream cannot run (its broken BackgroundEnhancer, closed loop, MS-SSIM,
images other than 3-channel BGR) are refused with the reason.
"""
from __future__ import annotations

from typing import Any, Mapping

from .errors import ConfigError, join
from .kinds import REQUIRED, Bool, Choice, Field, Float, Int, IntList, MapOf, Nullable, Section, Str
from .schema import DATA, KERNEL_BACKENDS

KIND = "loci-v1"


def is_loci_v1(data: Mapping) -> bool:
    """True for an original-Loci config: ``kind`` "loci-v1", or upstream's CATER schema (``datatype`` "cater"
    with ``model.num_objects``)."""
    if data.get("kind") == KIND:
        return True
    model = data.get("model")
    return data.get("datatype") == "cater" and isinstance(model, Mapping) and "num_objects" in model


def _v1_flag_names() -> list:
    from loci_fast.loci_v1.compat import V1_COMPAT_FLAGS  # declared beside the modules that read them

    return list(V1_COMPAT_FLAGS)


def _refuse_true(key: str, why: str):
    def post(section: dict, path: str) -> None:
        if section[key]:
            raise ConfigError(join(path, key), why)
    return post


def _model_post(model: dict, path: str) -> None:
    """Size rules upstream's modules assert (or crash on) at construction, loci.md §2.5, §2.9."""
    (h, w), (lh, lw) = model["input_size"], model["latent_size"]
    enc, dec = model["encoder"], model["decoder"]
    rules = [
        (model["level"] in (1, 2), "level", f"{model['level']}: the original Loci runs at level 1 (input/4) or 2"),
        (model["img_channels"] == 3, "img_channels", f"{model['img_channels']}: only 3-channel (BGR) images exist"),
        ((h, w) == (16 * lh, 16 * lw), "input_size", f"{[h, w]} must be 16x latent_size {[lh, lw]}"),
        (min(lh, lw) >= 2, "latent_size", f"{[lh, lw]}: the latent grid needs >= 2 cells per axis"),
        (enc["level1_channels"] % 12 == 0, "encoder.level1_channels",
         f"{enc['level1_channels']} must be a multiple of 12 (the 12 input channels are repeated)"),
        (enc["channels"] % enc["level1_channels"] == 0, "encoder.channels",
         f"{enc['channels']} must be a multiple of encoder.level1_channels ({enc['level1_channels']})"),
        (dec["channels"] % 12 == 0 and dec["channels"] % dec["level1_channels"] == 0, "decoder.channels",
         f"{dec['channels']} must be a multiple of 12 and of decoder.level1_channels ({dec['level1_channels']})"),
        (dec["level1_channels"] % 3 == 0, "decoder.level1_channels",
         f"{dec['level1_channels']} must be a multiple of 3"),
    ]
    for ok, key, problem in rules:
        if not ok:
            raise ConfigError(join(path, key), problem)


MODEL_V1 = Section({
    "level": Field(Int(min=1), 2, "input level: 1 = input/4 (stages 1-2), 2 = full input (stages 3-4)"),
    "batch_size": Field(Int(min=1), 16, "videos per batch (per rank)"),
    "num_objects": Field(Int(min=1), 10, "object slots O"),
    "img_channels": Field(Int(min=1), 3, "image channels (3, BGR)"),
    "input_size": Field(IntList(2, min=1), [240, 320], "full input [height, width] (16x latent_size)"),
    "latent_size": Field(IntList(2, min=1), [15, 20], "latent grid [height, width]"),
    "gestalt_size": Field(Int(min=1), 96, "gestalt code size G"),
    "object_regularizer": Field(Float(), 1.0, "object-permanence loss weight"),
    "position_regularizer": Field(Float(), 1.0, "position smoothness loss weight"),
    "time_regularizer": Field(Float(), 1.0, "temporal-consistency loss weight"),
    "supervision_factor": Field(Float(min=0), 0.01, "snitch tracking loss weight"),
    "encoder": Field(Section({
        "channels": Field(Int(min=1), 48, "latent channels"),
        "level1_channels": Field(Int(min=1), 24, "channels at input/4"),
        "num_layers": Field(Int(min=1), 3, "residual blocks per stage"),
        "reg_lambda": Field(Float(min=0), 1e-10, "never read upstream"),
    }, "LociEncoder"), {}),
    "predictor": Field(Section({
        "heads": Field(Int(min=1), 2, "attention heads (hidden width = (G+4)·heads)"),
        "layers": Field(Int(min=1), 2, "attention + GateL0RD layers"),
        "channels_multiplier": Field(Int(min=1), 2, "never read upstream"),
        "reg_lambda": Field(Float(min=0), 1e-10, "GateL0RD L0 regularisation"),
    }, "LociPredictor"), {}),
    "decoder": Field(Section({
        "channels": Field(Int(min=1), 48, "latent channels"),
        "level1_channels": Field(Int(min=1), 3, "RGB head channels at input/4"),
        "num_layers": Field(Int(min=1), 5, "residual blocks of the trunk"),
    }, "LociDecoder"), {}),
    "background": Field(Section({
        "learning_rate": Field(Float(min=0), 1e-4, "background optimizer learning rate"),
        "use": Field(Bool(), False, "upstream's BackgroundEnhancer (broken at f5a7023, refused)"),
        "num_layers": Field(Int(min=1), 1, "BackgroundEnhancer only (unused)"),
        "reg_lambda": Field(Float(min=0), 1e-10, "unused"),
        "latent_channels": Field(Int(min=1), 48, "BackgroundEnhancer only (unused)"),
        "level1_channels": Field(Int(min=1), 24, "BackgroundEnhancer only (unused)"),
        "gestalt_size": Field(Int(min=1), 8, "BackgroundEnhancer only (unused)"),
    }, "the precalculated background", post=_refuse_true(
        "use", "true selects upstream's BackgroundEnhancer, which crashes at f5a7023 (loci.md §2.10); "
               "use false (the precalculated background)")), {}),
    "gradient_accumulation_steps": Field(Int(min=1), 1, "ours, for the trainer: must be 1 (one optimizer step "
                                         "per iteration, upstream's schedule)"),
    "mixed_precision": Field(Bool(), False, "ours, for the trainer: the cater stages train in fp32"),
    "tracker": Field(Bool(), True, "CATER snitch tracker head (ours; upstream has it with a camera)"),
    "compat": Field(MapOf(Bool(), known=_v1_flag_names, what="original-Loci compat flag"), {},
                    "upstream-quirk flags, name -> on; declared in loci_fast.loci_v1.compat"),
}, "the original Loci model", post=_model_post)


def _root_post(cfg: dict, path: str) -> None:
    if cfg["closed_loop"]:
        raise ConfigError(join(path, "closed_loop"), "true crashes upstream (undefined name, loci.md §3.7) and is "
                          "not supported; use false")
    if cfg["msssim"]:
        raise ConfigError(join(path, "msssim"), "true (an MS-SSIM reconstruction loss) is not supported; use false "
                          "(binary cross-entropy, as every upstream config)")


CONFIG_V1 = Section({
    "kind": Field(Choice(KIND), KIND, "model family: the original Loci"),
    "model_path": Field(Str(), REQUIRED, "run name; outputs go to out/<model_path>"),
    "model": Field(MODEL_V1, REQUIRED),
    "data": Field(DATA, {}, "datasets (webdataset CATER shards), ours"),
    "datatype": Field(Choice("cater"), "cater", "upstream dataset routing (only CATER is wired upstream)"),
    "dataset": Field(Str(), "CATER", "upstream dataset name"),
    "latent_type": Field(Str(), "snitch_tracker", "upstream latent tracker type"),
    "num_workers": Field(Int(min=0), 2, "data-loader workers"),
    "prefetch_factor": Field(Nullable(Int(min=1)), 2, "batches prefetched per worker"),
    "learning_rate": Field(Float(min=0), 1e-4, "encoder/decoder/predictor learning rate (init: 30x)"),
    "sequence_len": Field(Int(min=1), 300, "predicted frames per video (upstream loads one more)"),
    "backprop_steps": Field(Int(min=1), 1, "never read upstream: every frame truncates (loci.md §3.6)"),
    "epochs": Field(Int(min=0), 1000, "epochs"),
    "updates": Field(Int(min=0), 50000000, "stop after this many updates"),
    "closed_loop": Field(Bool(), False, "unsupported (crashes upstream)"),
    "teacher_forcing": Field(Int(min=0), 10, "warm-up steps on frame 0; the regularisers are 0 during them"),
    "statistics_offset": Field(Int(min=0), 10, "logging offset"),
    "msssim": Field(Bool(), False, "unsupported MS-SSIM loss"),
    "load_optimizers": Field(Bool(), False, "restore optimizer states with --load"),
    "scheduled_sampling": Field(Bool(), False, "never read upstream"),
    "entity_pretraining_steps": Field(Int(min=0), 30000, "updates before the background optimizer steps"),
    "background_pretraining_steps": Field(Int(min=0), 0, "updates of background-only training"),
    "seed": Field(Int(min=0), 1234, "random seed, ours"),
    "stage": Field(Nullable(Str()), None, "trainer stage (cater1..cater4), ours"),
    "deepspeed": Field(Nullable(Str()), None, "path of a DeepSpeed JSON config, ours"),
    "kernels": Field(Section({
        "backend": Field(Choice(*KERNEL_BACKENDS), "auto", "loci_fast.kernels backend"),
    }, "fused kernels", shorthand="backend"), {}),
}, "an original-Loci (v1) config", post=_root_post)


def describe_kind(data: Any) -> str:
    """'loci-v1' or 'loci-s' for a raw config dict."""
    return KIND if isinstance(data, Mapping) and is_loci_v1(data) else "loci-s"
