"""`loci-fast eval` of an original-Loci CATER model: snitch localisation over real CATER shards.

The shards are converted (`convert-cater`) from a small folder in the release's layout (the
`data synth --cater` generator) with the frames also stored at the tiny model's input size; the
model is the tiny CATER config with random weights, written as `import-upstream` writes them.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from loci_fast.cli import main
from loci_fast.config import load_config
from loci_fast.data.cater.load import iter_cater
from loci_fast.data.cater.synth import make_release
from loci_fast.data.convert_cater import convert_cater
from loci_fast.eval import cater, tracking
from loci_fast.eval.cater_rollout import VideoNoise
from loci_fast.eval.weights import load_weights
from loci_fast.loci_v1 import LociV1

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny" / "cater-stage1.json"  # level 1: frames at input_size / 4
VIDEOS, FRAMES = 4, 5
SIZE = (8, 12)
# video 000001's labels, written by hand: Cone_0 hides the snitch from the end of its contain (1) to the
# start of its pick-place (3), Cone_1 from the end of its contain (4) on; the last position is in cell
# row floor(-2.2) + 3 = 0, col floor(1.5) + 3 = 4 (§6.1)
HAND_MOVES = {"Cone_0": [["_contain", "Spl_0", 0, 1], ["_pick_place", None, 3, 4]],
              "Cone_1": [["_slide", None, 0, 1], ["_contain", "Spl_0", 2, 4]]}
HAND_LAST, HAND_LABEL, HAND_CONTAINED = (1.5, -2.2), 4, [0, 1, 1, 0, 1]


@pytest.fixture(scope="module")
def cfg():
    return load_config(str(CONFIG))


@pytest.fixture(scope="module")
def shards(tmp_path_factory, cfg) -> str:
    """4 CATER videos of 5 frames in 2 shards, frames also at the tiny model's level-1 size 12x8."""
    root = tmp_path_factory.mktemp("release") / "CATER"
    make_release(root, VIDEOS, FRAMES, seed=1)
    labels = root / "labels" / "000001.json"
    meta = json.loads(labels.read_text())
    snitch = next(o for o in meta["objects"] if o["shape"] == "spl")
    snitch["locations"][str(FRAMES - 1)][:2] = HAND_LAST
    meta["movements"].update(HAND_MOVES)
    labels.write_text(json.dumps(meta))
    h, w = SIZE
    for video in sorted(root.glob("0*")):
        (video / "train" / f"{w}x{h}").mkdir()
        for f in sorted((video / "train" / "80x60").iterdir()):
            Image.open(f).resize((w, h), Image.BILINEAR).save(video / "train" / f"{w}x{h}" / f.name, quality=90)
    out = tmp_path_factory.mktemp("shards")
    convert_cater(root, out, resolutions=(f"{w}x{h}",), shard_videos=2, progress=False, log=lambda s: None)
    return str(out / "*.tar")


@pytest.fixture(scope="module")
def weights(tmp_path_factory, cfg) -> Path:
    torch.manual_seed(3)
    model = LociV1.from_config(cfg["model"], teacher_forcing=cfg["teacher_forcing"])
    with torch.no_grad():
        model.background.alpha.fill_(0.8)  # a half faded-in background: the target fade takes part
    path = tmp_path_factory.mktemp("model") / "cater.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path),
              metadata={"format": "loci-fast", "model": "loci-v1", "source": "upstream"})
    return path


@pytest.fixture(scope="module")
def batched(shards, weights, tmp_path_factory) -> Path:
    """One evaluation of all videos, 2 per batch."""
    out = tmp_path_factory.mktemp("eval") / "b2"
    run_eval(weights, shards, out, "--batch-size", "2", "--seed", "5")
    return out


def run_eval(weights: Path, shards: str, out: Path, *extra: str) -> dict:
    rc = main(["eval", "--checkpoint", str(weights), "--config", str(CONFIG), "--data", shards, "--out", str(out),
               "--no-progress", *extra])
    assert rc == 0
    return json.loads((out / "results.json").read_text())


def samples(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def direct_snitch(model: LociV1, item: dict, seed: int, carryover: bool = True) -> torch.Tensor:
    """The tracker's predictions of one video, written the way upstream's eval loop reads (§4.1)."""
    frames = torch.from_numpy(item["frames"])[None]
    bg = torch.from_numpy(item["background"])
    noise = VideoNoise(model, [item["key"]], seed)
    t_len = item["num_frames"] - 1
    inp = frames[:, 0]
    inp_next, target = inp, inp.clamp(0, 1)
    error, state, preds, draw = None, None, [], 0
    with torch.no_grad():
        for t in range(-model.teacher_forcing, t_len):
            if t >= 0:
                inp, inp_next = inp_next, frames[:, t + 1]
                target = inp_next.clamp(0, 1)
            elif not carryover:
                target = frames[:, 0].clamp(0, 1)
            out, state = model.step(inp, bg, state, error, noise.step(draw), test=True)
            draw += 1
            init = max(0.0, min(1.0, model.init_status()))
            bg_error = torch.sqrt(((target - out.background) ** 2).mean(1, keepdim=True))
            error = torch.sqrt(torch.sqrt(((target - out.output) ** 2).mean(1, keepdim=True))) * bg_error
            if t >= 0:
                preds.append(out.snitch[0])
            fg = (bg_error > 0.1).float()
            target = (target * fg * (1 - init) + target * init).clamp(0, 1)
    return torch.stack(preds).double()  # (T-1, 2): predictions for frames 1 .. T-1


def upstream_curves(pairs: list[tuple[int, float]]) -> dict[int, tuple[list[float], float]]:
    by: dict[int, list[float]] = {}
    for d, v in pairs:
        by.setdefault(d, []).append(v)
    return {d: ([float(np.quantile(v, q)) for q in cater.QUANTILES], float(np.mean(v))) for d, v in sorted(by.items())}


def test_numbers_equal_a_direct_computation_on_the_trackers_outputs(cfg, shards, weights, batched):
    res = json.loads((batched / "results.json").read_text())
    model = tracking.build_model(cfg, load_weights(weights).state, torch.device("cpu"))
    items = list(iter_cater(shards, size=SIZE))
    assert len(items) == VIDEOS
    preds = [direct_snitch(model, item, 5) for item in items]
    final = cater.snitch_localisation(torch.stack([p[-1] for p in preds]), torch.tensor([i["label"] for i in items]),
                                      torch.tensor(np.stack([i["snitch_xyz"][-1] for i in items])))
    want = cater.localisation_summary(final)
    row = res["rows"][0]
    assert row["videos"] == VIDEOS
    for k in ("top1", "top5", "l1_grid", "l1_upstream", "l2"):
        assert row[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    recs = samples(batched)
    assert [r["video"] for r in recs] == [i["key"] for i in items]
    hand = next(i for i, r in enumerate(recs) if r["video"] == "000001")  # the hand-built labels, converted
    assert (recs[hand]["target"], recs[hand]["contained"]) == (HAND_LABEL, HAND_CONTAINED)
    assert items[hand]["contained"][FRAMES:].all()  # still in Cone_1 until frame 301
    assert [r["label"] for r in recs] == final["label"].tolist()
    # L2 versus containment, counted frame by frame as upstream does
    for name, offset in (("containment", 0), ("containment_upstream_offset", 1)):
        pairs = []
        for item, p in zip(items, preds):
            c = item["contained"][:FRAMES]
            dur = np.zeros(FRAMES, int)
            for t in range(FRAMES):
                dur[t] = (dur[t - 1] if t else 0) * int(c[t]) + int(c[t])
            l2 = cater.tracking_l2(p, torch.from_numpy(item["snitch_xyz"][1:FRAMES])).tolist()
            pairs += [(int(dur[f - offset]), l2[f - 1]) for f in range(1, FRAMES) if dur[f - offset] > 0]
        assert pairs, "the synthetic videos must contain the snitch somewhere"
        curves = upstream_curves(pairs)
        got = res["containment"][name]
        assert got["duration"] == list(curves) and got["count"] == [sum(d == k for d, _ in pairs) for k in curves]
        np.testing.assert_allclose(got["quantiles"], [q for q, _ in curves.values()], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["mean"], [m for _, m in curves.values()], rtol=1e-5, atol=1e-6)
    md = (batched / "results.md").read_text()
    assert "L1 grid (cells)" in md and "L1 as upstream computes it" in md
    assert "| frames contained |" in (batched / "containment.md").read_text()
    # the corrected warm-up protocol is another rollout
    assert not torch.equal(direct_snitch(model, items[0], 5, carryover=False), preds[0])


def test_resume_skips_finished_videos_and_batches_agree(shards, weights, batched, tmp_path, monkeypatch):
    """One video per batch, interrupted after 2 videos (and a line cut short), then resumed: the same
    numbers as the 2-per-batch run, and no video evaluated twice."""
    seen: list[str] = []
    real = tracking.video_records

    def counting(model, batch, **kw):
        seen.extend(item["key"] for item in batch)
        return real(model, batch, **kw)

    monkeypatch.setattr(tracking, "video_records", counting)
    out = tmp_path / "b1"
    run_eval(weights, shards, out, "--batch-size", "1", "--seed", "5", "--videos", "2")
    first = samples(out)
    assert len(first) == 2 and seen == [r["video"] for r in first]
    with open(out / "samples.jsonl", "a") as fh:
        fh.write('{"batch": 2, "vid')  # a kill mid-write: the cut line is dropped on resume
    res = run_eval(weights, shards, out, "--batch-size", "1", "--seed", "5")
    one, two = samples(out), samples(batched)
    assert seen == [r["video"] for r in one] and len(set(seen)) == VIDEOS  # each video once over both runs
    assert one[:2] == first and res["rows"][0]["videos"] == VIDEOS
    for a, b in zip(one, two):
        assert (a["video"], a["label"], a["top1"], a["top5"]) == (b["video"], b["label"], b["top1"], b["top5"])
        np.testing.assert_allclose(a["screen"], b["screen"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["l2_track"][1:], b["l2_track"][1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="other seed"):  # records of another noise seed are not mixed in
        tracking.evaluate_tracking(load_config(str(CONFIG)), load_weights(weights).state, shards, out, seed=6,
                                   progress=False, source=load_weights(weights).source)


def test_clear_errors_for_shards_without_cater_labels_and_loci_s_checkpoints(shards, weights, tmp_path, capsys):
    from loci_fast.data.synth.run import SynthConfig, run_synth
    from loci_fast.model.loci_model import LociModel

    plain = tmp_path / "plain"
    run_synth(plain, 1, SynthConfig(frames=2, size=32, min_objects=1, max_objects=2, seed=1), shard_videos=1,
              workers=1, progress=False, log=lambda s: None)
    assert main(["eval", "--checkpoint", str(weights), "--config", str(CONFIG), "--data", str(plain / "*.tar"),
                 "--out", str(tmp_path / "e1"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "carries no CATER labels" in err and "loci-fast data convert-cater" in err

    loci_s = load_config(str(REPO / "configs" / "tiny" / "loci-s.json"))
    path = tmp_path / "loci-s.safetensors"
    save_file({k: v.contiguous().clone() for k, v in LociModel.from_config(loci_s).state_dict().items()}, str(path))
    assert main(["eval", "--checkpoint", str(path), "--config", str(CONFIG), "--data", shards,
                 "--out", str(tmp_path / "e2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not an original-Loci model" in err and "look like Loci-s weights" in err and "import-upstream" in err
    assert main(["eval", "--checkpoint", str(path), "--config", str(REPO / "configs" / "tiny" / "loci-s.json"),
                 "--kind", "loci-v1", "--data", shards, "--out", str(tmp_path / "e3"), "--no-progress"]) == 2
    assert "the config is a Loci-s config" in capsys.readouterr().err
    assert not (tmp_path / "e2" / "samples.jsonl").exists()


@pytest.mark.slow
def test_two_ranks_equal_one_process(shards, weights, batched, tmp_path):
    """torchrun with 2 ranks (gloo on the CPU): every video exactly once, rank 0 writes, same numbers."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "r2"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "loci_fast.cli", "eval", "--checkpoint", str(weights), "--config", str(CONFIG), "--data", shards,
           "--out", str(out), "--batch-size", "1", "--seed", "5", "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two, one = samples(out), samples(batched)
    assert sorted(r["video"] for r in two) == sorted(r["video"] for r in one) and len(two) == VIDEOS
    by = {r["video"]: r for r in two}
    for a in one:
        b = by[a["video"]]
        assert (a["label"], a["top1"], a["top5"]) == (b["label"], b["top1"], b["top5"])
        np.testing.assert_allclose(a["screen"], b["screen"], rtol=1e-5, atol=1e-6)
    res, ref = json.loads((out / "results.json").read_text()), json.loads((batched / "results.json").read_text())
    assert res["ranks"] == 2
    for k in ("top1", "top5", "l1_grid", "l1_upstream", "l2"):
        assert res["rows"][0][k] == pytest.approx(ref["rows"][0][k], rel=1e-5, abs=1e-6)
