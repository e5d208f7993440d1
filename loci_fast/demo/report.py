"""The demo's REPORT.md: loss plots, per-stage tables and one sentence per stage on what it achieved."""
from __future__ import annotations

from pathlib import Path

from loci_fast.eval.pretraining import ON_OBJECT_IOU

from .stages import DATA, LOCI_DATA, DemoStage


def plot_losses(stages: list[DemoStage], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loci_fast.train.logs import read_metrics

    for stage in stages:
        records = read_metrics(out / stage.name / "metrics.jsonl")
        steps = [r["step"] for r in records]
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.plot(steps, [r["loss"] for r in records], lw=0.8, alpha=0.5, label="loss")
        # loci: two whole sequences of chunks (the loss cycles with the chunk's place in its sequence)
        k = 9 if stage.kind == "loci" else max(1, len(records) // 15)
        smooth = [sum(r["loss"] for r in records[max(0, i - k):i + 1]) / len(records[max(0, i - k):i + 1])
                  for i in range(len(records))]
        ax.plot(steps, smooth, lw=1.6, label=f"running mean ({k + 1} steps)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss")
        ax.set_yscale("log")
        ax.set_title(f"{stage.name}: training loss (mean over ranks)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "report" / f"loss-{stage.name}.png")
        plt.close(fig)


def _run_cells(s: DemoStage, records: list[dict]) -> str:
    """The cells every stage's row starts with: name, steps, wall seconds, s/step, first -> last loss."""
    per_step = f"{s.step_seconds:.2f}" if s.step_seconds else "-"
    return (f"{s.name} | {records[-1]['step'] if records else 0} | {s.seconds:.0f} | {per_step} | "
            f"{_window(records, True):.4f} -> {_window(records, False):.4f}")


def _window(records: list[dict], first: bool, key: str = "loss", n: int = 10) -> float:
    part = records[:n] if first else records[-n:]
    return sum(r.get(key, 0.0) for r in part) / max(len(part), 1)


def _objects(spec: dict = DATA) -> str:
    lo, hi = spec["objects"]
    return "one object" if lo == hi == 1 else f"{lo} objects" if lo == hi else f"{lo}-{hi} objects"


def _achieved(s: DemoStage) -> str:
    """One honest sentence per stage from its held-out numbers."""
    iou, px = s.eval.get("mean_iou"), s.eval.get("position_px")
    if s.kind == "loci":
        return _achieved_loci(s)
    if s.kind == "background":
        return (f"the background reconstructs held-out target frames with rgb loss "
                f"{s.eval.get('rgb_loss', float('nan')):.3f} (SSIM term {s.eval.get('rgb_ssim', float('nan')):.3f}) "
                f"after {s.steps} steps; see its grid for the uncertainty map and the reconstruction.")
    if s.name == "mask":
        return (f"the mask autoencoder reproduces the object's silhouette at its true position "
                f"(mean IoU {iou or 0:.2f}).")
    if s.name in ("depth", "rgb"):
        return (f"the {s.name} autoencoder decodes from the true mask and position; "
                f"held-out {s.name} loss {s.eval.get(s.name + '_loss', float('nan')):.3f}.")
    if s.name == "stage1":
        return (f"the encoder's code decoded at the ground-truth position (as upstream's stage 1), mean IoU "
                f"{iou or 0:.2f}; the encoder's own position estimate is {px or 0:.1f} px off the object's "
                "centroid, which is what stage 2 has to decode at.")
    verdict = ("the masks land on the objects" if (iou or 0) >= 0.3 else
               "the masks do not yet land on the objects reliably" if (iou or 0) >= 0.1 else
               "the masks do not land on the objects (not learnt in this budget)")
    hits = s.eval.get("on_object")
    share = ("" if hits is None else f" The decoded mask overlaps its object (IoU >= {ON_OBJECT_IOU}) "
             f"in {100 * hits:.0f}% of the held-out crops.")
    return (f"decodes at the encoder's own position ({px or 0:.1f} px off the centroid): mean IoU "
            f"{iou or 0:.2f}; {verdict}.{share}")


def _achieved_loci(s: DemoStage) -> str:
    ari = s.eval.get("fg_ari", float("nan"))
    verdict = ("the slots separate the objects" if ari >= 0.5 else
               "the slots separate the objects only in part" if ari >= 0.2 else
               "the slots do not yet separate the objects (not learnt in this budget)")
    if not ari > s.eval.get("initial_fg_ari", float("nan")):  # also when either is NaN
        verdict += "; the short training does not improve the slot masks over the handed-over model"
    return (f"the whole model (slots, GateL0RD predictor, composited over the frozen background) runs from "
            f"the demo's own stage-2 and background weights and trains {s.steps} TBPTT chunks; on "
            f"{s.eval.get('videos', 0)} held-out multi-object videos its reconstruction's rgb MSE is "
            f"{s.eval.get('rgb_mse', float('nan')):.4f} (as handed over, untrained: "
            f"{s.eval.get('initial_rgb_mse', float('nan')):.4f}) and the per-frame FG-ARI of its slot masks "
            f"{ari:.2f} (untrained: {s.eval.get('initial_fg_ari', float('nan')):.2f}; 0 = chance): {verdict}.")


def _loci_lines(stages: list[DemoStage], out: Path) -> list[str]:
    """The loci stage's table and the explanation under it."""
    from loci_fast.train.logs import read_metrics

    runs, nan = [s for s in stages if s.kind == "loci"], float("nan")
    if not runs:
        return []
    lines = ["| loci stage | steps | wall (s) | s/step | train loss first 10 -> last 10 | "
             "val reconstruction rgb MSE: handed over -> trained | val FG-ARI per frame: handed over -> trained |", "|---|---|---|---|---|---|---|"]
    for s in runs:
        records = read_metrics(out / s.name / "metrics.jsonl")
        lines.append(f"| {_run_cells(s, records)} | {s.eval.get('initial_rgb_mse', nan):.4f} -> {s.eval.get('rgb_mse', nan):.4f} | "
                     f"{s.eval.get('initial_fg_ari', nan):.3f} -> {s.eval.get('fg_ari', nan):.3f} |")
    lines += ["", f"The loci stage trains the whole Loci-s model on {LOCI_DATA['train_videos']} multi-object "
              f"videos ({LOCI_DATA['frames']} frames, {LOCI_DATA['size']}x{LOCI_DATA['size']}, "
              f"{_objects(LOCI_DATA)} per video), initialised from stage 2 (encoder, decoder, initial "
              "slot std and depth) and the background (frozen), with upstream's truncated-BPTT schedule: "
              "per sequence a teacher-forcing chunk on frame 0, then chunks of K frames, the slot state "
              "carried between them. One optimiser step is one chunk, so the training loss cycles with "
              "the chunk's place in the sequence; the first and last 10 steps cover whole sequences. "
              "Validation: held-out videos in evaluation mode (random slot initialisation, seeded), each "
              "frame's reconstruction from its own step (rgb MSE: per pixel and channel, in [0, 1]); "
              "FG-ARI per frame of each pixel's most likely slot against the objects' instance masks. Handed over: the model before the loci stage (stage 2 "
              "and the background loaded, the predictor, update gate and object discovery at their seeded "
              "initial values).", ""]
    return lines


def _loci_section(s: DemoStage, out: Path) -> list[str]:
    grids = sorted((out / "report").glob(f"{s.name}-video-*.png"))
    lines = [f"## {s.name}", "", f"![loss {s.name}](report/loss-{s.name}.png)", "",
             f"Held-out videos, one column per frame; rows: {', '.join(s.rows) or 'frames, then outputs'} "
             "(slot masks: each pixel painted in its slots' colours, weighted by their masks):", ""]
    for grid in grids:
        lines += [f"![{grid.stem}](report/{grid.name})", ""]
    lines += _loci_table(s, out)
    gif = out / "report" / f"{s.name}-animation.gif"
    if gif.exists():
        lines += [f"Held-out video 0 as `loci-fast viz` draws it (every step: input, output, slot masks, per-slot "
                  f"panels; all files: [{s.eval.get('viz', 'viz')}]({s.eval.get('viz', '')})):", "",
                  f"![animation](report/{gif.name})", ""]
    return lines


def _loci_table(s: DemoStage, out: Path) -> list[str]:
    """The tables of ``loci-fast eval`` on the held-out videos, without their title and settings lines."""
    table = out / s.eval["table"] if s.eval.get("table") else None
    if table is None or not table.exists():
        return []
    body = [line for line in table.read_text().splitlines() if not line.startswith(("# ", "- "))]
    while body and not body[0].strip():
        body.pop(0)
    return [f"`loci-fast eval` on the held-out videos ([{s.eval['table']}]({s.eval['table']})): upstream's "
            "MOVi table (IoU and ARI x100, mean ± std over the model's seeds) and the standard metrics:", "",
            *[line.replace("## ", "### ") for line in body], ""]


def write_report(stages: list[DemoStage], out: Path, device: str, total: float) -> Path:
    from loci_fast.train.logs import read_metrics

    loci = [s for s in stages if s.kind == "loci"]
    lines = ["# loci-fast demo report", "",
             f"The object stages of Loci-Segmented (each from the previous stage's checkpoint) and "
             f"its background module, trained with `deepspeed` on {device}, on {DATA['train_videos']} synthetic "
             f"PyBullet videos ({DATA['frames']} frames, {DATA['size']}x{DATA['size']}, "
             f"{_objects()} per video). "
             f"Evaluation on {DATA['val_videos']} held-out videos."
             + (f" Then the whole Loci-s model, from the demo's own stage-2 and background runs, on "
                f"{LOCI_DATA['train_videos']} multi-object videos ({_objects(LOCI_DATA)} per video)."
                if loci else "")
             + f" Total wall time {total / 60:.1f} min.", "",
             "| stage | steps | wall (s) | s/step | train loss first 10 -> last 10 | val loss | "
             "val mask | val rgb | val depth | val position error (px) | val mean IoU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    objects = [s for s in stages if s.kind == "object"]
    backgrounds = [s for s in stages if s.kind == "background"]
    for s in objects:
        records = read_metrics(out / s.name / "metrics.jsonl")
        iou = f"{s.eval.get('mean_iou', 0):.3f}" if s.name in ("mask", "stage1", "stage2") else "n/a"
        pos = f"{s.eval['position_px']:.1f}" if "position_px" in s.eval else "n/a"
        lines.append(
            f"| {_run_cells(s, records)} | "
            f"{s.eval.get('loss', float('nan')):.4f} | {s.eval.get('mask_loss', 0):.4f} | "
            f"{s.eval.get('rgb_loss', 0):.4f} | {s.eval.get('depth_loss', 0):.4f} | {pos} | {iou} |")
    lines += ["", "The training loss is the sum of the stage's loss terms (LociPretrainer `loss`); "
              "mask, depth and rgb decoders train their own autoencoder, stages 1 and 2 the "
              "encoder and decoder (mask term weighted x100). Mean IoU: predicted mask > 0.5 "
              "against the instance mask. Position error: distance between the encoder's (x, y) and "
              "the centroid of the object's mask, in pixels of the model's input crop. Validation: "
              "crops drawn as in training from held-out videos.", ""]
    if backgrounds:
        lines += ["| background stage | steps | wall (s) | s/step | train loss first 10 -> last 10 | val loss | "
                  "val rgb_loss | val rgb_ssim | val uncertainty |", "|---|---|---|---|---|---|---|---|---|"]
        for s in backgrounds:
            records = read_metrics(out / s.name / "metrics.jsonl")
            lines.append(f"| {_run_cells(s, records)} | {s.eval.get('loss', float('nan')):.4f} | {s.eval.get('rgb_loss', float('nan')):.4f} | "
                         f"{s.eval.get('rgb_ssim', float('nan')):.4f} | {s.eval.get('uncertainty', float('nan')):.4f} |")
        lines += ["", "The background stage trains the dynamic background module (uncertainty U-Net, masked "
                  "ViT, motion and depth contexts) on frame pairs of the same videos: it reconstructs the "
                  "target frame's background where its uncertainty says no object is; the loss is upstream's "
                  "(rgb L2 + SSIM, depth, uncertainty supervision) with its warm-ups.", ""]
    lines += _loci_lines(stages, out)
    lines += ["What each stage achieved:", ""]
    lines += [f"* {s.name}: {_achieved(s)}" for s in stages]
    lines += [""]
    for s in stages:
        if s.kind == "loci":
            lines += _loci_section(s, out)
            continue
        lines += [f"## {s.name}", "", f"![loss {s.name}](report/loss-{s.name}.png)", "",
                  f"Held-out crops; rows: {', '.join(s.rows) or 'inputs, then outputs'} "
                  "(targets and outputs inside the object mask; depth normalised per object):", "",
                  f"![reconstruction {s.name}](report/reconstruction-{s.name}.png)", ""]
    lines += ["Runs, checkpoints, metrics.jsonl, TensorBoard logs and training-time image grids: "
              "`" + str(out) + "/<stage>/`. Log of every command: `demo.log`.", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    return path
