"""One-shot GPU check (``make gpu-check``): everything a lent GPU should measure, in one command.

    python3 bench/gpu_check.py [--out DIR] [--budget 450]      # on the GPU machine
    python3 bench/gpu_check.py --dry-run                        # here: checks steps, flags and imports

Steps, in order of value, each with a time cap inside the total budget (default 450 s, under the
8 minutes a session can give it; the caps add up to more, so the last full suites may be cut), each logging to ``DIR/<step>.log``:

1. ``compile-gate``: ``loci-fast bench --compile --real-driver`` for the device's architecture:
   the driver's register and spill counts beside ptxas's, which the CPU-side gate only estimates.
2. ``gpu-tests``: ``pytest -m gpu`` over the test files holding gpu-marked tests (junit XML).
3. ``train-step``: ``loci-fast bench --train-step`` for stage 2, B = 32, 256x256, bf16, both backends.
4. ``train-step-loci``: the same for the whole Loci-s model (``configs/loci-s.json``, 256x256, fp32 as
   upstream trains it), one TBPTT chunk a step, at slot batches B·O = 16, 32, 64, 128 (B = 1 to 8),
   both backends side by side; every finished row is written at once, so a cut run keeps its rows.
5. ``eval-loci``: ``loci-fast bench --eval-model configs/loci-s.json``: end-to-end Loci-s evaluation
   (model and metrics) in frames/s at batch 1 and at the largest batch that fits.
6. ``bench-quick``: the kernel benchmark suite (eager, torch.compile, ours) at one shape per op.
7. ``bench-<op>``: the full suite, one run per op, with what the budget leaves: a run cut short
   still leaves the finished ops' results.

Every results file goes under one folder, ``bench/results/gpu-check-<date>-<device>/`` by default,
with ``SUMMARY.md`` / ``summary.json`` (step, exit code, seconds). Commit that folder.

Runs with the GPU image's Python 3.12, torch 2.11 and triton 3.6, without DeepSpeed or webdataset
(nothing on these paths imports them) and without this repo installed: it links
``loci_fast/kernels`` -> ``kernels`` when the link is missing and puts the repo on ``PYTHONPATH``.
When the image lacks pytest, ``make gpu-carry`` (run on the CPU machine) leaves pure-Python wheels
in ``build/gpu-carry``; carry that folder to the GPU machine and this script finds it.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / "build" / "gpu-carry"
STAGE2 = "configs/pretrain-encoder-decoder-stage2.json"
LOCI = "configs/loci-s.json"
LOCI_BO = "16,32,64,128"  # B·O = batch x 16 slots
# The gpu test that repeats the train-step step (and writes outside the check's folder).
DUPLICATE_TESTS = ["tests/bench/test_train_step.py::test_upstream_stage2_bf16_both_backends"]
ABSENT_ON_GPU_IMAGE = ("deepspeed", "webdataset")


def gpu_test_files() -> list[str]:
    """Test files under tests/ with a gpu-marked test (bench/test_*.py repeat the suite's timings)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text(errors="replace"))


def ops() -> list[str]:
    """The ops of loci_fast.kernels.OPS, read from the source (no import needed)."""
    text = (ROOT / "kernels" / "__init__.py").read_text()
    m = re.search(r"^OPS = \(([^)]*)\)", text, re.M)
    return re.findall(r'"(\w+)"', m.group(1)) if m else []


def steps(out: Path, arch: int) -> list[dict]:
    """(name, argv, cap seconds) of every step; ``loci-fast`` steps also list their CLI arguments."""
    py = sys.executable
    cli = [py, "-m", "loci_fast.cli"]
    gate = ["bench", "--compile", "--real-driver", "--arch", str(arch), "--out", str(out)]
    train = ["bench", "--train-step", STAGE2, "--dtype", "bf16", "--batch-size", "32", "--input-size", "256",
             "--backends", "reference", "triton", "--steps", "10", "--out", str(out)]
    tests = [py, "-m", "pytest", "-m", "gpu", "-q", "-o", "addopts=", "-p", "no:cacheprovider",
             f"--junitxml={out / 'gpu-tests.xml'}"] + [f"--deselect={t}" for t in DUPLICATE_TESTS] + gpu_test_files()
    loci = ["bench", "--train-step", LOCI, "--dtype", "fp32", "--bo", LOCI_BO, "--backends", "reference", "triton",
            "--steps", "2", "--warmup", "1", "--out", str(out)]
    evaluate = ["bench", "--eval-model", LOCI, "--eval-batches", "1,max", "--out", str(out)]
    quick = ["bench", "--quick", "--out", str(out)]
    out_steps = [
        {"name": "compile-gate", "argv": cli + gate, "cli": gate, "cap": 75},
        {"name": "gpu-tests", "argv": tests, "cap": 150},
        {"name": "train-step", "argv": cli + train, "cli": train, "cap": 90},
        {"name": "train-step-loci", "argv": cli + loci, "cli": loci, "cap": 120},
        {"name": "eval-loci", "argv": cli + evaluate, "cli": evaluate, "cap": 90},
        {"name": "bench-quick", "argv": cli + quick, "cli": quick, "cap": 100},
    ]
    for op in ops():  # the full suite with what the budget leaves, one op (and results file) at a time
        suite = ["bench", "--ops", op, "--out", str(out)]
        out_steps.append({"name": f"bench-{op}", "argv": cli + suite, "cli": suite, "cap": 150})
    return out_steps


def _env(extra_path: list[str] | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = (extra_path or []) + [str(ROOT)] + ([str(CARRY)] if CARRY.is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _link_kernels() -> None:
    """``loci_fast.kernels`` is ``kernels/`` (setup.py's package_dir); without an install, a link does it."""
    link = ROOT / "loci_fast" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels")


def _device() -> tuple[str, int, dict]:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here; use --dry-run on a CPU machine")
    cap = torch.cuda.get_device_capability(0)
    info = {"device": torch.cuda.get_device_name(0), "capability": f"{cap[0]}.{cap[1]}",
            "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001 - reported, the steps then say what fails
        info["triton"] = f"does not import: {err}"
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                            timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001
        pass
    return info["device"], cap[0] * 10 + cap[1], info


def run(out: Path | None, budget: float) -> int:
    _link_kernels()
    os.chdir(ROOT)
    sys.path[:0] = [str(ROOT)] + ([str(CARRY)] if CARRY.is_dir() else [])
    name, arch, info = _device()
    from loci_fast.kernels import backend_summary

    info["kernels"] = backend_summary()
    date = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    out = out or ROOT / "bench" / "results" / f"gpu-check-{date}-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"gpu-check: {name} (sm_{arch}), budget {budget:.0f} s, results in {out}", flush=True)
    started = time.monotonic()
    summary = []
    for step in steps(out, arch):
        left = budget - (time.monotonic() - started)
        if left < 20:
            summary.append({"step": step["name"], "status": "not run (budget spent)"})
            continue
        cap = min(step["cap"], left)
        t0 = time.monotonic()
        with open(out / f"{step['name']}.log", "w") as log:
            try:
                rc = subprocess.run(step["argv"], stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT,
                                    timeout=cap).returncode
                status = "ok" if rc == 0 else f"FAILED (exit {rc})"
            except subprocess.TimeoutExpired:
                rc, status = None, f"cut at {cap:.0f} s"
        summary.append({"step": step["name"], "status": status, "exit": rc,
                        "seconds": round(time.monotonic() - t0, 1), "log": f"{step['name']}.log"})
        print(f"  {step['name']}: {status} ({summary[-1]['seconds']} s)", flush=True)
    (out / "summary.json").write_text(json.dumps({"env": info, "steps": summary}, indent=1) + "\n")
    lines = [f"# GPU check: {name}", "", *(f"- {k}: {v}" for k, v in info.items() if k != "nvidia_smi"), "",
             "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['step']} | {s['status']} | {s.get('seconds', '-')} |" for s in summary]
    (out / "SUMMARY.md").write_text("\n".join(lines) + "\n")
    print(f"gpu-check: wrote {out} ({time.monotonic() - started:.0f} s)")
    return 0 if all(s["status"] == "ok" for s in summary) else 1


# ---------------------------------------------------------------- dry run (CPU)

_BLOCKER = '''
import sys
class _AbsentOnGpuImage:
    """gpu-check dry run: these packages are not on the GPU image."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ImportError(f"{{name}} is not on the GPU image (gpu-check dry run)")
        return None
sys.meta_path.insert(0, _AbsentOnGpuImage())
'''

_IMPORTS = '''
import torch, triton
import loci_fast.cli, loci_fast.bench.compile_gate, loci_fast.bench.runner, loci_fast.bench.train_step
import triton.backends.nvidia.compiler  # the compile gate's path into Triton
from loci_fast.bench.runner import load_cases
from loci_fast.config import load_config
from loci_fast.kernels import OPS, backend_summary
from loci_fast.train.stages import get_stage, stage_from_config
from loci_fast.train.ranger import Ranger  # noqa: F401
cases = load_cases(OPS, False, torch.device("cuda"))
stage = get_stage(stage_from_config(load_config({stage2!r})))
import loci_fast.model.loci_model  # noqa: F401  the loci sweep's model
import loci_fast.bench.eval_model, loci_fast.eval.video.throughput  # noqa: F401,E401  the eval-loci step
loci = get_stage(stage_from_config(load_config({loci!r})))
print(f"imports ok with triton {{triton.__version__}}: {{len(cases)}} GPU bench cases, stages {{stage.name}}, "
      f"{{loci.name}}; " + backend_summary())
'''


def dry_run() -> int:
    """Check every step on a CPU: CLI flags parse, files exist, imports and gpu-test collection work
    with DeepSpeed and webdataset unimportable (and with triton 3.6.0 when .venv/triton-3.6.0 exists)."""
    _link_kernels()
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from loci_fast.cli import build_parser

    problems = []
    parser = build_parser()
    out = Path(tempfile.mkdtemp(prefix="gpu-check-dry-"))
    for step in steps(out, 90):
        if "cli" in step:
            try:
                parser.parse_args(step["cli"])
            except SystemExit:
                problems.append(f"{step['name']}: loci-fast does not accept {' '.join(step['cli'])}")
        missing = [a for a in step["argv"] if a.endswith((".py", ".json")) and not (ROOT / a.split("::")[0]).exists()]
        problems += [f"{step['name']}: missing file {m}" for m in missing]
        print(f"  {step['name']}: cap {step['cap']} s: {' '.join(step['argv'][1:])}")
    total = sum(s["cap"] for s in steps(out, 90))
    print(f"  caps add up to {total} s (the budget, 450 s by default, cuts the last ones)")
    blocker = out / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(_BLOCKER.format(names=set(ABSENT_ON_GPU_IMAGE)))
    tritons = [[]] + ([[str(ROOT / ".venv" / "triton-3.6.0")]] if (ROOT / ".venv" / "triton-3.6.0").is_dir() else [])
    for extra in tritons:
        env = _env([str(blocker)] + extra)
        label = "triton 3.6.0" if extra else "the pinned triton"
        proc = subprocess.run([sys.executable, "-c", _IMPORTS.format(stage2=STAGE2, loci=LOCI)], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        print(f"  imports with {label}, no {'/'.join(ABSENT_ON_GPU_IMAGE)}: "
              + (proc.stdout.strip() if proc.returncode == 0 else "FAILED"))
        if proc.returncode != 0:
            problems.append(f"imports with {label}: {proc.stderr.strip().splitlines()[-1:]}")
        collect = [a for a in steps(out, 90)[1]["argv"] if not a.startswith("--junitxml")] + ["--collect-only"]
        proc = subprocess.run(collect, env=env, cwd=ROOT, capture_output=True, text=True)
        found = re.search(r"(\d+)(?:/\d+)? tests? collected|(\d+) selected", proc.stdout)
        if proc.returncode != 0 or not found:
            problems.append(f"gpu-tests collection with {label} failed: {proc.stdout.strip().splitlines()[-3:]}")
        else:
            print(f"  gpu-tests collect with {label}: {proc.stdout.strip().splitlines()[-1]}")
    here = f"Python {sys.version.split()[0]}"
    print(f"  not checkable here: the GPU image's Python 3.12 and torch 2.11 ({here} here)")
    for p in problems:
        print(f"FAIL {p}")
    print("gpu-check dry run: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 0 if not problems else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results/gpu-check-<date>-<device>)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all steps (default: %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="on a CPU: check the steps, flags and imports")
    args = p.parse_args(argv)
    return dry_run() if args.dry_run else run(args.out, args.budget)


if __name__ == "__main__":
    sys.exit(main())
