"""Two real ranks under torchrun (gloo): equal batch counts, disjoint evaluation videos."""
import json
import os
import subprocess
import sys
from pathlib import Path


from loci_fast.data import iter_videos


def test_two_ranks_equal_counts_and_disjoint_eval(tmp_path, synth_shards):
    script = Path(__file__).with_name("dist_loader_check.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), str(script), *synth_shards, str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["train_batches"] == r1["train_batches"] == r0["train_len"] == r1["train_len"] > 0
    assert r0["train_items"] != r1["train_items"]  # ranks draw different data
    assert r0["eval_batches"] == r1["eval_batches"] == r0["eval_len"]
    a = {tuple(x) for x in r0["eval_items"]}
    b = {tuple(x) for x in r1["eval_items"]}
    assert len(a) == len(r0["eval_items"]) and len(b) == len(r1["eval_items"])
    assert not a & b
    expected = {(v["key"], s) for v in iter_videos(synth_shards) for s in range(0, v["meta"]["num_frames"] - 3, 4)}
    assert a | b == expected
    assert r0["padding"] + r1["padding"] == 2 * 3 * r0["eval_batches"] - len(expected)
