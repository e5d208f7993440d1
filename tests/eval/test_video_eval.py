"""``loci-fast eval`` on Loci-s checkpoints over whole videos (issue 16 item 2).

Real synth shards, a tiny Loci-s whose mask decoder is scaled so its slots win pixels (> 0.8) and
the metrics are not degenerate; batch 2 == batch 1, resume, 2 ranks == 1 process, segmentation mode
after a few `loci` stage steps, and the error cases."""
from __future__ import annotations

import json
import tarfile
import io
from pathlib import Path

import pytest
import torch

from loci_fast.cli import main
from loci_fast.config import load_config
from loci_fast.eval.movi import table_rows
from loci_fast.eval.video import evaluate_videos, parse_seeds
from loci_fast.eval.video.draws import PerVideoDraws, video_seed
from loci_fast.model.loci_model import LociModel

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny" / "loci-s.json"
MASK_OUT = ("decoder.to_mask.mask_reconstruction.weight2", "decoder.to_mask.mask_reconstruction.bias2")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """3 PyBullet videos (4 frames, 64x64, 2-3 objects), one per shard."""
    from loci_fast.data.synth.run import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("video-eval")
    run_synth(out, 3, SynthConfig(frames=4, size=64, min_objects=2, max_objects=3, seed=7), shard_videos=1,
              workers=1, progress=False, log=lambda s: None)
    return str(out / "*.tar")


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in LociModel.from_config(load_config(CONFIG)).state_dict().items()}
    for k in MASK_OUT:  # large mask logits: some slot masks exceed 0.8, so IoU and ARI are not trivial
        state[k] = state[k] * 400
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A tiny Loci-s as an ``export`` file (weights + config + stage)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("video-weights") / "loci.safetensors"
    save_file(tiny_state(), str(path), metadata={"format": "loci-fast", "stage": "loci",
                                                 "config": CONFIG.read_text()})
    return path


def _by_id(records: list[dict]) -> dict[tuple, dict]:
    return {(r["mode"], r["seed"], r["dataset"], r["video"]): r for r in records}


def assert_same_numbers(a: list[dict], b: list[dict]) -> None:
    """The same videos with the same per-video numbers (to 1e-6; thresholded counts exactly)."""
    ra, rb = _by_id(a), _by_id(b)
    assert sorted(ra) == sorted(rb)
    for key in ra:
        for part in ("upstream", "standard"):
            assert ra[key][part] == pytest.approx(rb[key][part], abs=1e-6), (key, part)
            for k in ("num_objects", "pred_num_objects"):
                assert ra[key][part][k] == rb[key][part][k]


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "videos.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------- units

def test_per_video_draws_equal_batches_of_one():
    seeds = [video_seed(3, v) for v in ("a@0", "b@0")]
    x = torch.zeros(2, 1, 5, 6)
    probs = torch.rand(2, 30)

    def draws(rows: slice):
        n = len(seeds[rows])
        with PerVideoDraws(seeds[rows]):
            return (torch.randn_like(x[rows]), torch.rand_like(x[rows]), torch.randn_like(torch.zeros(n * 3, 4)),
                    torch.multinomial(probs[rows], 4, replacement=True), torch.normal(0.0, 0.0, size=(7,)))

    both = draws(slice(0, 2))
    first, second = draws(slice(0, 1)), draws(slice(1, 2))
    for i, (b, f, s) in enumerate(zip(both, first, second)):
        if i == 4:  # not batch-shaped: one vector for the batch (zeros at std 0)
            assert torch.equal(b, f) and not b.any()
            continue
        rows = b.shape[0] // 2
        assert torch.equal(b[:rows], f) and torch.equal(b[rows:], s)
    assert not torch.equal(both[0][0], both[0][1])  # the videos' draws differ
    before = torch.randn_like  # the torch functions come back afterwards
    with PerVideoDraws(seeds), pytest.raises(RuntimeError, match="not batch-shaped"):
        torch.randn_like(torch.zeros(3, 2))
    assert torch.randn_like is before
    assert video_seed(3, "a@0") == video_seed(3, "a@0") != video_seed(4, "a@0")


def test_seeds_parse_and_bad_strings_are_refused():
    assert parse_seeds("1-5") == [1, 2, 3, 4, 5]
    assert parse_seeds("1-3,7,2") == [1, 2, 3, 7]
    for bad in ("", "a", "5-1", "1-"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_table_pools_iou_and_averages_ari_over_seeds():
    import statistics

    recs = []
    for seed, parts in ((1, [(1.0, 2.0, 0.5), (0.0, 3.0, 1.0)]), (2, [(2.0, 2.0, 0.2), (1.0, 3.0, 0.4)])):
        for i, (iou, n, ari) in enumerate(parts):
            recs.append({"mode": "random", "seed": seed, "dataset": "d", "video": f"v{i}",
                         "upstream": {"iou_sum": iou, "num_objects": n, "seq_fg_ari": ari, "oca": 1.0},
                         "standard": {"fg_ari": ari, "fg_ari_frame": ari, "mbo": 0.1, "iou_sum": iou,
                                      "num_objects": n, "pred_iou_sum": 0, "pred_num_objects": n, "fg_iou": 0.3}})
    (row,) = table_rows(recs, modes=["random"], datasets=["d"], seeds=[1, 2])
    ious = [100 * (1 + 0) / 5, 100 * (2 + 1) / 5]
    aris = [100 * (0.5 + 1.0) / 2, 100 * (0.2 + 0.4) / 2]
    assert row["iou"]["mean"] == pytest.approx(statistics.mean(ious))
    assert row["iou"]["std"] == pytest.approx(statistics.stdev(ious))
    assert row["ari"]["mean"] == pytest.approx(statistics.mean(aris))
    assert row["ari"]["std"] == pytest.approx(statistics.stdev(aris))
    assert row["videos"] == 2 and row["seeds"] == [1, 2]


# ---------------------------------------------------------------------------------------- errors

def _no_masks_shard(tmp: Path, shards: str) -> str:
    """A copy of one synth video's meta.json saying the video has no segmentation."""
    import glob

    with tarfile.open(sorted(glob.glob(shards))[0]) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("meta.json"))
        meta = json.loads(tar.extractfile(member).read())
    meta.update(has_segmentation=False, num_instances=0, num_instance_masks=0,
                frame_instances=[[] for _ in range(meta["num_frames"])])
    data = json.dumps(meta).encode()
    path = tmp / "nomasks-000000.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(member.name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_errors_name_the_problem_and_the_fix(weights, shards, tmp_path, capsys):
    def err(*extra: str) -> str:
        assert main(["eval", "--checkpoint", str(weights), "--data", shards, "--out", str(tmp_path / "e"),
                     "--no-progress", *extra]) == 2
        return capsys.readouterr().err

    assert "unknown mode 'best'" in err("--modes", "random,best")
    assert "neither a seed nor a range" in err("--seeds", "one")
    msg = err("--modes", "segmentation")
    assert "proposal" in msg and "--init-from" in msg
    nomasks = _no_masks_shard(tmp_path, shards)
    assert main(["eval", "--checkpoint", str(weights), "--data", nomasks, "--out", str(tmp_path / "e2"),
                 "--no-progress"]) == 2
    msg = capsys.readouterr().err
    assert "no segmentation masks" in msg and "shards with masks" in msg


# ---------------------------------------------------------------------------------------- runs
# float64: the per-video numbers are then exactly batch-invariant (float32 rounding differs between
# batch sizes and can move a pixel across a mask threshold, see evaluate_videos).
F64 = ("--dtype", "float64")


def _cli(weights: Path, shards: str, out: Path, *extra: str) -> int:
    return main(["eval", "--checkpoint", str(weights), "--data", shards, "--out", str(out), "--no-progress", *F64,
                 *extra])


@pytest.fixture(scope="module")
def one_process(weights, shards, tmp_path_factory) -> list[dict]:
    """The first 2 videos, random and regularization mode, seed 1, batch 1, one process."""
    out = tmp_path_factory.mktemp("video-one")
    return evaluate_videos(weights, shards, out, modes="random,regularization", seeds="1", batch_size=1,
                           videos=2, dtype="float64", progress=False)["records"]


@pytest.mark.slow
def test_batch_two_equals_batch_one(weights, shards, one_process, tmp_path):
    summary = evaluate_videos(weights, shards, tmp_path, modes="random,regularization", seeds="1",
                              batch_size=2, videos=2, dtype="float64", progress=False)
    assert_same_numbers(summary["records"], one_process)
    by = _by_id(one_process)
    assert {k[0] for k in by} == {"random", "regularization"} and len(by) == 2 * 2
    # Not degenerate: slots win pixels; the mask drop acts.
    up = [r["upstream"] for r in one_process]
    assert all(0 < u["iou_sum"] < u["num_objects"] and 0 < u["seq_fg_ari"] < 1 for u in up)
    assert any(by[k]["upstream"] != by[("regularization", *k[1:])]["upstream"] for k in by if k[0] == "random")
    table = Path(summary["table"]).read_text()
    assert "| Loci-s (rnd) |" in table and "| Loci-s (reg) |" in table and "FG-ARI (video)" in table


@pytest.mark.slow
def test_resume_skips_finished_videos(weights, shards, one_process, tmp_path):
    part = tmp_path / "part"
    assert _cli(weights, shards, part, "--videos", "1", "--batch-size", "1") == 0
    first = _lines(part)
    assert len(first) == 1
    with open(part / "videos.jsonl", "a") as fh:
        fh.write('{"mode": "random", "seed": 1, "data')  # a line cut by a kill
    assert _cli(weights, shards, part, "--videos", "2", "--batch-size", "2") == 0
    resumed = _lines(part)
    assert resumed[0] == first[0] and len(resumed) == 2  # the first video was not evaluated again
    reference = [r for r in one_process if r["mode"] == "random" and r["seed"] == 1]
    assert_same_numbers(resumed, reference)
    rows = json.loads((part / "results.json").read_text())["rows"]
    expected = table_rows(reference, modes=["random"], datasets=[reference[0]["dataset"]], seeds=[1])
    assert _rows_close(rows, expected)
    # other settings are refused, with the fix
    assert _cli(weights, shards, part, "--videos", "2", "--dtype", "float32") == 2


def _rows_close(a: list[dict], b: list[dict]) -> bool:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if not isinstance(v, dict)} == \
               {k: v for k, v in y.items() if not isinstance(v, dict)}
        for k, v in x.items():
            if isinstance(v, dict):
                assert v["seeds"] == y[k]["seeds"] and (v["mean"] is None) == (y[k]["mean"] is None)
                if v["mean"] is not None:
                    assert v["mean"] == pytest.approx(y[k]["mean"], abs=1e-6), k
    return True


@pytest.mark.slow
def test_two_ranks_equal_one_process(weights, shards, one_process, tmp_path):
    from tests.train.helpers import launcher, run

    out = tmp_path / "two"
    proc = run(launcher("torchrun", 2) + ["eval", "--checkpoint", str(weights), "--data", shards, "--out",
                                          str(out), "--modes", "random,regularization", "--seeds", "1-2",
                                          "--videos", "2", "--batch-size", "2", "--no-progress", *F64], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = _lines(out)
    ids = [(r["mode"], r["seed"], r["dataset"], r["video"]) for r in lines]
    assert len(ids) == len(set(ids)) == 2 * len(one_process)  # every video exactly once, for both seeds
    assert_same_numbers([r for r in lines if r["seed"] == 1], one_process)
    by = _by_id(lines)  # another seed, other draws: other numbers
    assert any(by[k]["upstream"] != by[(k[0], 2, k[2], k[3])]["upstream"] for k in by if k[1] == 1)
    assert "- ranks: 2" in (out / "results.md").read_text()


@pytest.mark.slow
def test_segmentation_mode_trains_and_evaluates(shards, tmp_path):
    """A Loci-s in segmentation mode (a proposal in its weights) trains two `loci` steps, then evaluates."""
    from safetensors.torch import save_file

    from loci_fast.model.proposal import LociProposal
    from tests.train.helpers import launcher, run, train_args

    seg = load_config(CONFIG).replace({"model.inference_mode": "segmentation"})
    torch.manual_seed(1)
    proposal = tmp_path / "proposal.safetensors"
    save_file({k: v.contiguous() for k, v in LociProposal.from_config(seg["model"]).state_dict().items()},
              str(proposal), metadata={"stage": "proposal", "step": "5"})
    run_dir = tmp_path / "run"
    proc = run(launcher("python") + train_args(CONFIG, shards, run_dir, "--max-steps", "2", "--save-every", "2",
                                               "--init-from", str(proposal), "--set",
                                               "model.inference_mode=segmentation", stage=None), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run_dir), "--data", shards, "--out", str(out), "--modes",
                 "segmentation", "--videos", "1", "--batch-size", "1", "--no-progress"]) == 0
    lines = _lines(out)
    assert [r["mode"] for r in lines] == ["segmentation"]
    assert all(r["steps"] == 3 and r["upstream"]["num_objects"] > 0 for r in lines)
    assert "| Loci-s (seg) |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_throughput_times_the_whole_evaluation():
    from loci_fast.eval.video.throughput import frames_per_second, synthetic_windows

    cfg = load_config(CONFIG).replace({"sequence_len": 2})
    batch = synthetic_windows(cfg, 2)
    assert batch["instance_masks"].shape == (2, 2, 32, 64, 64) and batch["fg"].amax() == 1
    rows = frames_per_second(cfg, tiny_state(), batch_sizes=(1, "max"), repeats=1)
    assert [r["batch_size"] for r in rows] == [1, 1] and all(r["device"] == "cpu" for r in rows)
    assert all(r["frames_per_s"] > 0 for r in rows)


def test_video_scores_match_upstream_loops_and_sklearn(gen):
    """The per-video accumulation against upstream's loops (frames concatenated along the width, per-frame
    Hungarian sums, the prediction's off-by-one) and sklearn's ARI over the video's GT-foreground pixels."""
    from sklearn.metrics import adjusted_rand_score

    from loci_fast.eval import upstream_loops as up
    from loci_fast.eval.video.scores import VideoScores

    b, s, o, m, h, w = 2, 4, 4, 5, 12, 10
    ids = torch.randint(0, m + 1, (b, s, 1, h, w), generator=gen)  # 0 = background
    gt = (ids == torch.arange(1, m + 1).view(1, 1, m, 1, 1)).float()
    gt[0, 1, 2] = 0  # an object missing from one frame
    fg = gt.amax(2, keepdim=True)
    rec = torch.softmax(3 * torch.randn(b, s, o + 1, h, w, generator=gen), 2)
    pred = torch.softmax(3 * torch.randn(b, s, o + 1, h, w, generator=gen), 2)
    scores = VideoScores(gt > 0.8, gt > 0.8, fg > 0.8)
    steps = range(s - 1)
    for t in steps:
        scores.add(t, rec[:, t], pred[:, t])
    got = scores.records()
    on = lambda x: (x > 0.8).float()  # noqa: E731
    iou = sum(up.miou_loops(on(rec[:, t, :-1]), gt[:, t])[0] for t in steps)
    pred_iou = sum(up.miou_loops(on(pred[:, t, :-1]), gt[:, t])[0] for t in steps)  # upstream: frame t
    objects = sum(up.miou_loops(on(rec[:, t, :-1]), gt[:, t])[2] for t in steps)
    seq_fg = up.seq_ari_loops([gt[:, t] for t in steps], [on(rec[:, t, :-1]) for t in steps])
    seq_all = up.seq_ari_loops([torch.cat([gt[:, t], 1 - fg[:, t]], 1) for t in steps], [on(rec[:, t]) for t in steps])
    fg_iou = sum(up.fg_iou_loops(1 - rec[:, t, -1:], fg[:, t])[0] for t in steps) / len(steps)
    oca = sum(up.oca_loops(rec[:, t, :-1], gt[:, t]) for t in steps) / len(steps)
    for i in range(b):
        u = got[i]["upstream"]
        assert u["iou_sum"] == pytest.approx(float(iou[i]), abs=1e-6)
        assert u["pred_iou_sum"] == pytest.approx(float(pred_iou[i]), abs=1e-6)
        assert u["num_objects"] == float(objects[i])
        assert u["seq_fg_ari"] == pytest.approx(float(seq_fg[i]), abs=1e-6)
        assert u["seq_ari"] == pytest.approx(float(seq_all[i]), abs=1e-6)
        assert u["fg_iou"] == pytest.approx(float(fg_iou[i]), abs=1e-6)
        assert u["oca"] == pytest.approx(float(oca[i]), abs=1e-6)
        seg = (gt[i, :s - 1] * torch.arange(1, m + 1).view(1, m, 1, 1)).sum(1)  # ids after the removal
        keep = seg > 0
        labels = rec[i, :s - 1].argmax(1)
        assert got[i]["standard"]["fg_ari"] == pytest.approx(
            adjusted_rand_score(seg[keep].numpy(), labels[keep].numpy()), abs=1e-6)
        assert got[i]["steps"] == s - 1
