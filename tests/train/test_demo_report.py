"""The demo's report: loss plots and the REPORT.md table from the runs' metrics.jsonl files."""
import json

from loci_fast import demo


def test_report_lists_every_stage_with_its_losses_and_plots(tmp_path):
    stages = [demo.DemoStage(s.name, s.config, 20, s.init_from, s.kind) for s in demo.STAGES]
    (tmp_path / "report").mkdir()
    for i, stage in enumerate(stages):
        run = tmp_path / stage.name
        run.mkdir()
        with open(run / "metrics.jsonl", "w") as fh:
            for step in range(1, 21):
                fh.write(json.dumps({"step": step, "loss": (i + 1) / step, "time": step * 0.5}) + "\n")
        stage.seconds, stage.step_seconds = 12.0, demo.step_time(run)
        stage.eval = {"loss": 0.25, "mask_loss": 0.125, "mean_iou": 0.5}
        if stage.kind == "loci":
            stage.eval = {"rgb_mse": 0.0123, "fg_ari": 0.25, "initial_rgb_mse": 0.0456, "initial_fg_ari": 0.0625,
                          "videos": 4}
            stage.rows = ["frame", "reconstruction", "slot masks"]
            for v in range(2):
                (tmp_path / "report" / f"loci-video-{v}.png").write_bytes(b"png")
        if stage.name in ("stage1", "stage2"):
            stage.eval["position_px"] = 3.5
    demo.plot_losses(stages, tmp_path)
    text = demo.write_report(stages, tmp_path, "2 CPU ranks (gloo)", 600.0).read_text()
    for i, stage in enumerate(stages):
        assert (tmp_path / "report" / f"loss-{stage.name}.png").stat().st_size > 1000
        if stage.kind == "loci":
            row = next(line for line in text.splitlines() if line.startswith(f"| {stage.name} |"))
            first = sum((i + 1) / s for s in range(1, 11)) / 10
            last = sum((i + 1) / s for s in range(11, 21)) / 10
            assert row == f"| loci | 20 | 12 | 0.50 | {first:.4f} -> {last:.4f} | 0.0456 -> 0.0123 | 0.062 -> 0.250 |"
            line = next(line for line in text.splitlines() if line.startswith("* loci: "))
            assert "rgb MSE is 0.0123 (as handed over, untrained: 0.0456)" in line
            assert "FG-ARI of its slot masks 0.25 (untrained: 0.06; 0 = chance)" in line
            assert line.endswith("separate the objects only in part.")
            stage.eval.update(fg_ari=0.03125)
            line = next(line for line in demo.write_report(stages, tmp_path, "x", 600.0).read_text().splitlines()
                        if line.startswith("* loci: "))
            assert line.endswith("do not yet separate the objects (not learnt in this budget); the short "
                                 "training does not improve the slot masks over the handed-over model.")
            assert "![loci-video-0](report/loci-video-0.png)" in text and "report/loci-video-1.png" in text
            assert "rows: frame, reconstruction, slot masks" in text
            continue
        if stage.kind == "background":
            row = next(line for line in text.splitlines() if line.startswith(f"| {stage.name} |"))
            assert f"| 20 | 12 | 0.50 | {sum((i + 1) / s for s in range(1, 11)) / 10:.4f} -> " in row
            assert row.count("|") == 10 and f"* {stage.name}: the background reconstructs" in text
            assert f"report/reconstruction-{stage.name}.png" in text
            continue
        first = sum((i + 1) / s for s in range(1, 11)) / 10
        last = sum((i + 1) / s for s in range(11, 21)) / 10
        row = next(line for line in text.splitlines() if line.startswith(f"| {stage.name} |"))
        assert f"| 20 | 12 | 0.50 | {first:.4f} -> {last:.4f} | 0.2500 | 0.1250 |" in row
        iou = "0.500" if stage.name in ("mask", "stage1", "stage2") else "n/a"
        pos = "3.5" if stage.name in ("stage1", "stage2") else "n/a"
        assert row.endswith(f"| {pos} | {iou} |")
        assert f"* {stage.name}: " in text
        assert f"report/reconstruction-{stage.name}.png" in text
    assert "10.0 min" in text
    assert "Then the whole Loci-s model, from the demo's own stage-2 and background runs, on 64 multi-object" in text


def test_report_says_when_stage2_misses_the_objects(tmp_path):
    stages = [demo.DemoStage(s.name, s.config, 20, s.init_from, s.kind) for s in demo.STAGES]
    (tmp_path / "report").mkdir()
    for stage in stages:
        (tmp_path / stage.name).mkdir()
        (tmp_path / stage.name / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "time": 0.0}) + "\n")
        stage.eval = {"loss": 1.0, "mean_iou": 0.6, "position_px": 2.0}
    stage2 = next(s for s in stages if s.name == "stage2")
    stage2.eval = {"loss": 3.0, "mean_iou": 0.0, "position_px": 30.0}
    text = demo.write_report(stages, tmp_path, "2 CPU ranks (gloo)", 60.0).read_text()
    line = next(line for line in text.splitlines() if line.startswith("* stage2: "))
    assert "30.0 px" in line and "0.00" in line and "do not land on the objects" in line
    stage2.eval = {"loss": 1.0, "mean_iou": 0.5, "position_px": 3.0, "on_object": 0.75}
    text = demo.write_report(stages, tmp_path, "2 CPU ranks (gloo)", 60.0).read_text()
    line = next(line for line in text.splitlines() if line.startswith("* stage2: "))
    assert "the masks land on the objects" in line and "(IoU >= 0.25) in 75% of the held-out crops" in line
