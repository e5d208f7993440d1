"""Run under torchrun (gloo) by test_distributed.py: every rank reports what its loaders gave it.

Each batch is followed by an all_reduce, as a DDP step would: unequal batch counts would hang.
"""
import json
import sys

import torch
import torch.distributed as dist

from loci_fast.data import object_crops, video_chunks


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    *shards, out = sys.argv[1:]
    train = object_crops(shards, batch_size=4, size=(16, 16), num_workers=2, seed=7)  # rank/world from dist
    train_items = []
    for b in train:
        dist.all_reduce(torch.ones(1))
        train_items += [(k, int(f), int(i)) for k, f, i in zip(b["key"], b["frame"], b["instance"])]
    ev = video_chunks(shards, batch_size=3, sequence_len=4, training=False, num_workers=1)
    eval_items, eval_batches, padding = [], 0, 0
    for b in ev:
        dist.all_reduce(torch.ones(1))
        eval_batches += 1
        padding += int((~b["valid"]).sum())
        eval_items += [(k, int(s)) for k, s, ok in zip(b["key"], b["start"], b["valid"]) if ok]
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"train_batches": len(train_items) // 4, "train_len": len(train), "train_items": train_items,
                   "eval_batches": eval_batches, "eval_len": len(ev), "eval_items": eval_items,
                   "padding": padding}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
