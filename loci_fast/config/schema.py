"""The config schema: every key, its type, its default and its meaning, in one place.

Keys and values follow upstream Loci-Segmented's JSON configs (reference §21): every file in the
upstream ``configs/`` and ``model/movi-e-loci*.json`` validates unchanged. Defaults are the values of
upstream ``configs/loci-s.json`` (§21.1), so a config only has to state what differs. Our own keys:
``deepspeed``, ``kernels``, ``seed``, ``model.compat`` and ``shards`` in data entries.
``describe_defaults()`` prints this table.
"""
from __future__ import annotations

from typing import Any

from .errors import ConfigError, join
from .kinds import (REQUIRED, Bool, Choice, Field, Float, Int, IntList, ListOf, MapOf, Nullable,
                    Section, Str)

INFERENCE_MODES = ("random", "regularization", "segmentation")
PRETRAINING_MODES = ("mask", "depth", "rgb", "embedding", "all")
RGB_LOSSES = ("YCbCrL2SSIMLoss", "l1ssim")
KERNEL_BACKENDS = ("auto", "triton", "reference")


def _data_entry_post(entry: dict, path: str) -> None:
    if (entry["path"] is None) == (entry["shards"] is None):
        raise ConfigError(path, "a data entry needs exactly one of 'shards' (webdataset shard pattern, "
                          "e.g. \"data/movi-a-train-{000000..000015}.tar\") or 'path' (upstream HDF5 file)")


DATA_ENTRY = Section({
    "shards": Field(Nullable(Str()), None, "webdataset shard pattern (brace notation), ours"),
    "path": Field(Nullable(Str()), None, "upstream HDF5 file (accepted so upstream configs load)"),
    "name": Field(Nullable(Str()), None, "dataset name for logs and per-dataset metrics"),
    "weight": Field(Float(min=0), 1.0, "sampling weight among the split's entries"),
    "split": Field(Bool(), False, "upstream: split one HDF5 file into train/val parts"),
    # Per-dataset options read by the background stage only (§17.4); defaults = the MOVi B-D values.
    "depth_weighting": Field(Bool(), False, "background: weight depth loss"),
    "time_std_dev": Field(Float(), -1.0, "background: std of the source/target frame gap (-1: uniform)"),
    "static": Field(Bool(), True, "background: the camera does not move (false for MOVi-E/F)"),
    "uncertainty_regularizer": Field(Float(), 0.0, "background: lambda_u of the unsupervised loss"),
    "rgb_loss_factor": Field(Float(), 0.0, "background: f_rgb of the unsupervised loss"),
    "rgb_warmup": Field(Float(), 0.0, "background: RGB warm-up"),
    "depth_warmup": Field(Float(), 0.0, "background: depth warm-up"),
    "color_input": Field(Bool(), True, "background: colour input (false for MOVi-A)"),
}, "one dataset", post=_data_entry_post)


class DataSplit(ListOf):
    """A list of data entries. Shorthand: a shard pattern string, or a list of patterns/entries."""

    def __init__(self) -> None:
        super().__init__(DATA_ENTRY)

    def check(self, value: Any, path: str) -> list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            value = [{"shards": v} if isinstance(v, str) else v for v in value]
        return super().check(value, path)

    def describe(self) -> str:
        return "a list of data entries ({shards|path, weight, ...}) or shard pattern strings"


DATA = Section({
    "train": Field(DataSplit(), [], "training datasets"),
    "val": Field(DataSplit(), [], "validation datasets"),
    "test": Field(DataSplit(), [], "test datasets"),
}, "datasets per split")


def _embedding(channels: int) -> Section:
    return Section({
        "channels": Field(Int(min=1), channels, "patch-embedding channels"),
        "expansion": Field(Int(min=1), 4, "hidden expansion of the patch MLPs"),
    })


def _decoder(blocks: list, layers: int | None) -> Section:
    fields = {}
    if layers is not None:
        fields["layers"] = Field(Int(min=0), layers, "ConvNeXt blocks in the decoder")
    fields["pretrain_encoder_blocks"] = Field(IntList(2, min=0), blocks,
                                              "ConvNeXt blocks of the pretraining encoder, per scale")
    fields["pretrain_encoder_channels"] = Field(Int(min=1), 256, "pretraining encoder channels E")
    return Section(fields)


def _model_post(model: dict, path: str) -> None:
    """Cross-key limits that upstream's modules assert (or crash on) at construction time."""
    g, enc, bg = model["gestalt_size"], model["encoder"], model["background"]
    mask_ch, pred_ch = model["embedding"]["mask"]["channels"], model["predictor"]["channels"]
    for i, side in enumerate(model["input_size"]):
        if side % 32 or side < 64:
            raise ConfigError(join(path, f"input_size.{i}"),
                              f"{side} must be a multiple of 32 and >= 64: the encoder downsamples by 32, "
                              "and with a 1x1 gestalt pooling grid (input 32) the Gaussians are NaN")
    rules = [
        (g // 2 >= mask_ch, "gestalt_size",
         f"gestalt_size // 2 ({g // 2}) must be >= embedding.mask.channels ({mask_ch}) (MaskDecoder, §8.1)"),
        (enc["channels"] % 16 == 0, "encoder.channels",
         f"{enc['channels']} must be a multiple of 16: the stem's first patch convolution widens the "
         "16-channel slot input by an integer factor (§7.3)"),
        (pred_ch >= 3 * g + 6, "predictor.channels",
         f"{pred_ch} must be >= 3 * gestalt_size + 6 = {3 * g + 6}: the predictor's input embedding "
         "may not narrow its tokens"),
    ]
    # Upstream's attention layers get min(1, C // 64) heads (§24.4): zero heads, a crash, below 64.
    for key in ("latent_channels", "motion_context_size", "depth_context_size"):
        rules.append((bg[key] >= 64, f"background.{key}",
                      f"{bg[key]} must be >= 64: the background's attention has min(1, C // 64) heads (§24.4)"))
    for ok, key, problem in rules:
        if not ok:
            raise ConfigError(join(path, key), problem)


def _compat_flag_names() -> list:
    # Declared beside the modules that read them; loci_fast.model.compat imports nothing heavy.
    from loci_fast.model.compat import COMPAT_FLAGS

    return list(COMPAT_FLAGS)


def _root_post(cfg: dict, path: str) -> None:
    if cfg["pretrainer_iterations"] > 3:
        raise ConfigError(join(path, "pretrainer_iterations"),
                          f"{cfg['pretrainer_iterations']} must be <= 3 (stage 2 has three refinement passes, §15.3)")


MODEL = Section({
    "batch_size": Field(Int(min=1), REQUIRED, "samples per batch (per rank)"),
    "num_slots": Field(Int(min=1), REQUIRED, "object slots O (pretraining runs use 1 whatever this says)"),
    "gestalt_size": Field(Int(min=2), REQUIRED, "gestalt code size G per modality"),
    "input_size": Field(IntList(2, min=1), REQUIRED, "input [height, width]"),
    "input_depth": Field(Bool(), False, "feed ground-truth depth to the encoder"),
    "inference_mode": Field(Choice(*INFERENCE_MODES), "random", "slot initialisation"),
    "object_permanence_strength": Field(Float(), 1.0, "object discovery permanence"),
    "entity_pretraining_steps": Field(Int(min=0), 10000, "object discovery warm-up steps"),
    "object_regularizer": Field(Float(), 0.0, "object loss weight (unused upstream)"),
    "position_regularizer": Field(Float(), 1.0, "position smoothness loss weight"),
    "time_regularizer": Field(Float(), 1.0, "translation-invariant object loss weight"),
    "encoder_regularizer": Field(Float(), 0.1, "current-frame reconstruction loss weight"),
    "mixed_precision": Field(Bool(), False, "fp16 training (false in every upstream config)"),
    "gradient_accumulation_steps": Field(Int(min=1), 1, "micro-batches per optimiser step"),
    "rgb_loss": Field(Choice(*RGB_LOSSES), "YCbCrL2SSIMLoss", "Loci RGB loss"),
    "amodal_iou": Field(Bool(), False, "never read upstream (§24.9); accepted so review configs load"),
    "amodal": Field(Bool(), False, "GT instance masks at > 0.4 instead of > 0.8 in evaluation"),
    "embedding": Field(Section({
        "mask": Field(_embedding(32), {}),
        "depth": Field(_embedding(64), {}),
        "rgb": Field(_embedding(128), {}),
    }, "patch embeddings per modality"), {}),
    "encoder": Field(Section({
        "channels": Field(Int(min=1), 32, "base channels C of the encoder stem"),
        "blocks": Field(IntList(4, min=0), [1, 1, 3, 2], "HyperConvNeXt blocks per stage"),
        "hyper_channels": Field(Int(min=1), 256, "hidden width of the hypernetwork MLP"),
    }, "LociEncoder"), {}),
    "decoder": Field(Section({
        "mask": Field(_decoder([2, 4], None), {}),
        "depth": Field(_decoder([2, 4], 3), {}),
        "rgb": Field(_decoder([4, 8], 5), {}),
    }, "decoders and their pretraining encoders"), {}),
    "predictor": Field(Section({
        "heads": Field(Int(min=1), 1, "attention heads"),
        "layers": Field(Int(min=1), 3, "predictor layers"),
        "channels": Field(Int(min=1), 1024, "predictor width"),
        "reg_lambda": Field(Float(min=0), 1e-8, "GateL0RD L0 regularisation"),
        "gate": Field(Section({
            "num_layers": Field(Int(min=1), 3, "update-gate MLP layers"),
            "num_hidden": Field(Int(min=1), 256, "update-gate hidden width"),
            "reg_lambda": Field(Float(min=0), 1e-5, "update-gate L0 regularisation"),
            "noise_level": Field(Float(min=0), 0.1, "update-gate noise"),
        }), {}),
    }, "update gate and predictor"), {}),
    "position_proposal": Field(Section({
        "channels": Field(Int(min=1), 64, "proposal channels (unused by upstream code)"),
        "num_slots": Field(Int(min=1), 16, "proposal slots"),
        "encoder_blocks": Field(IntList(4, min=0), [1, 2, 3, 1], "proposal U-Net encoder blocks"),
        "decoder_blocks": Field(IntList(4, min=0), [1, 1, 1, 1], "proposal U-Net decoder blocks"),
        "base_channels": Field(Int(min=1), 64, "proposal U-Net base channels"),
    }, "segmentation-based slot initialisation"), {}),
    "background": Field(Section({
        "supervision_factor": Field(Float(min=0), 0.1, "supervised uncertainty loss weight"),
        "depth_weighting": Field(Bool(), False, "weight the depth loss"),
        "uncertainty_threshold": Field(Float(min=0), 0.1, "uncertainty threshold of the loss region"),
        "motion_context_size": Field(Int(min=1), 256, "motion context size"),
        "depth_context_size": Field(Int(min=1), 256, "depth context size"),
        "latent_channels": Field(Int(min=1), 128, "transformer width C"),
        "num_layers": Field(Int(min=1), 4, "transformer layers L"),
    }, "uncertainty background"), {}),
    "compat": Field(MapOf(Bool(), known=_compat_flag_names, what="compat flag"), {},
                    "upstream-quirk flags, name -> on; the names are declared in loci_fast.model.compat"),
}, "the model", post=_model_post)


CONFIG = Section({
    "model_path": Field(Str(), REQUIRED, "run name; outputs go to out/<model_path>"),
    "model": Field(MODEL, REQUIRED),
    "data": Field(DATA, {}, "datasets"),
    "learning_rate": Field(Float(min=0), 1e-4, "learning rate"),
    "weight_decay": Field(Float(min=0), 1e-3, "decoupled weight decay"),
    "epochs": Field(Int(min=0), 1000, "epochs"),
    "sequence_len": Field(Int(min=1), 24, "frames per video sequence S"),
    "backprop_steps": Field(Int(min=1), 2, "TBPTT steps K per backward pass"),
    "teacher_forcing": Field(Int(min=0), 10, "teacher-forcing steps"),
    "pretraining_mode": Field(Choice(*PRETRAINING_MODES), "all", "LociPretrainer mode"),
    "pretrainer_iterations": Field(Int(min=0), 3, "pretrainer refinement passes (0: stage 1, 3: stage 2)"),
    "evalualte_ami": Field(Bool(), True, "compute AMI in validation (upstream spelling)"),
    "num_workers": Field(Int(min=0), 4, "data-loader workers per rank"),
    "prefetch_factor": Field(Nullable(Int(min=1)), 1, "batches prefetched per worker (null with num_workers 0)"),
    "world_size": Field(Int(min=1), 1, "upstream world size (informational; the launcher decides)"),
    "seed": Field(Int(min=0), 1234, "random seed (upstream --seed default)"),
    "stage": Field(Nullable(Str()), None, "trainer stage (mask|depth|rgb|stage1|stage2|background|loci|"
                   "proposal or module:NAME); null: from pretraining_mode/pretrainer_iterations"),
    "deepspeed": Field(Nullable(Str()), None, "path of a DeepSpeed JSON config; a relative one is looked "
                       "up from this file's folder and the folders above it, then the cwd"),
    "kernels": Field(Section({
        "backend": Field(Choice(*KERNEL_BACKENDS), "auto", "loci_fast.kernels backend"),
    }, "fused kernels", shorthand="backend"), {}),
}, "a loci-fast config", post=_root_post)
