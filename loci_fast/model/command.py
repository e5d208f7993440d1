"""``loci-fast import-upstream``: convert an upstream Loci-Segmented checkpoint into a loci-fast state dict."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-upstream", help="convert an upstream (Lightning) checkpoint into a loci-fast state dict",
        description="Reads an upstream Loci-Segmented checkpoint (a Lightning .ckpt or a saved state dict) "
                    "without executing pickled code, converts it to loci-fast's layout, checks it against the "
                    "model built from --config, and writes OUT (.safetensors, or a torch state dict otherwise).")
    p.add_argument("checkpoint", metavar="IN.ckpt", help="upstream checkpoint file")
    p.add_argument("--config", required=True, metavar="CFG",
                   help="the config the checkpoint was trained with (upstream JSON or ours)")
    p.add_argument("--kind", default="pretrainer",
                   choices=("pretrainer", "background", "proposal", "loci", "loci-v1"),
                   help="which upstream module the checkpoint holds (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="OUT", help="output file: *.safetensors or a torch file (.pt)")
    p.set_defaults(func=run)


def load_upstream_checkpoint(path: str) -> dict:
    """The state dict inside an upstream checkpoint, loaded with ``weights_only=True``.

    Accepts a Lightning checkpoint (its ``state_dict`` entry) or a bare state dict. Raises
    ValueError with a remedy when the file needs arbitrary unpickling or holds no state dict.
    """
    import pickle

    import torch

    try:
        damage = checkpoint_damage(path)
        if damage is None:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such checkpoint file") from None
    except (EOFError, OSError, KeyError) as err:  # what torch.load raises for cut-off or garbled bytes
        damage = f"it is corrupt or truncated ({type(err).__name__}: {err})"
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "EOF" in first or "corrupt" in first:  # the older pickle format, cut short
            damage = f"it is corrupt or truncated ({first})"
        else:
            raise ValueError(
                f"{path}: cannot be read safely with torch.load(weights_only=True) ({first}). loci-fast does not "
                "unpickle arbitrary objects, which could run code. If you trust the file, re-save only its "
                "tensors in an environment that can open it, e.g. torch.save(torch.load(IN, weights_only=False)"
                "['state_dict'], 'state_dict.pt'), and import that file.") from None
    if damage is not None:
        raise ValueError(f"{path}: not a readable checkpoint: {damage}. Copy or download the file again (compare "
                         "its size and checksum with the original)")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' entry or a state dict "
                         f"(a dict of names to tensors), found {type(obj).__name__}")
    return obj


def checkpoint_damage(path: str) -> str | None:
    """Why ``path`` cannot be a whole torch checkpoint, or None when it may be one.

    torch.save writes a zip archive (whose members carry CRCs; torch.load does not check them) or,
    in the older format, a pickle. An empty file, a zip without its end, a failed CRC or other bytes
    are named here, before torch.load turns them into an unrelated-looking error.
    """
    import zipfile

    with open(path, "rb") as fh:
        head = fh.read(4)
    if not head:
        return "the file is empty (0 bytes): corrupt, or cut off before its first byte"
    if head == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            return "it is corrupt or truncated (torch.save's zip archive has no directory at its end)"
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
            return f"it is corrupt ({err})"
        return None if bad is None else f"it is corrupt (member {bad} fails its CRC check)"
    if head[:1] != b"\x80":  # every pickle of protocol 2 or later starts so
        return ("it is not a PyTorch checkpoint: neither torch.save's zip format nor its older pickle "
                f"format (it starts with {head!r})")
    return None


def run(args: argparse.Namespace) -> int:
    from loci_fast.config import ConfigError, load_config

    from .background import BackgroundPretrainer
    from .pretrainer import LociPretrainer
    from .upstream import convert_state_dict

    try:
        cfg = load_config(args.config)
        model_cfg = cfg["model"]
    except ConfigError as err:
        print(f"error: --config {args.config}: {err}", file=sys.stderr)
        return 2
    if args.kind == "proposal":
        from .upstream_proposal import import_proposal

        return import_proposal(args.checkpoint, model_cfg, args.out)
    if args.kind == "loci-v1":  # the original Loci (upstream CognitiveModeling/Loci net*.pt)
        from loci_fast.loci_v1.upstream import import_loci_v1

        return import_loci_v1(args.checkpoint, model_cfg, args.out)
    try:
        state = load_upstream_checkpoint(args.checkpoint)
        if args.kind == "loci":
            from .loci_model import LociModel

            model = LociModel.from_config(cfg)
        elif args.kind == "background":
            model = BackgroundPretrainer.from_config(model_cfg)
        else:
            model = LociPretrainer(model_cfg)
        converted = convert_state_dict(state, kind=args.kind, model=model)
        model.load_state_dict(converted, strict=True)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # A converted background or Loci-s names its stage, so `loci-fast train --init-from` loads it one-to-one
    # into a run of that stage (pretrainer conversions stay unnamed: "upstream", see loci_fast.train.handover).
    save(converted, args.out, {"format": "loci-fast", "stage": args.kind, "source": "upstream"}
         if args.kind in ("background", "loci") else None)
    n = sum(t.numel() for t in converted.values())
    print(f"wrote {args.out}: {len(converted)} tensors, {n:,} values (kind {args.kind})")
    return 0


def save(state: dict, path: str, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as .safetensors (by extension, with ``metadata``) or with torch.save."""
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, path, metadata=metadata)
    else:
        torch.save(state, path)
