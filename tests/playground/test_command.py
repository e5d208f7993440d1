"""`loci-fast playground` as a user starts it: a real process on a free port, serving until stopped, from
a .safetensors file as `import-upstream --kind loci-v1` writes it."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

from .conftest import CONFIGS, REPO, random_state


def test_the_command_serves_until_interrupted(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "loci-v1.safetensors"
    save_file(random_state("loci-v1", 7), str(weights), metadata={"format": "loci-fast", "model": "loci-v1"})
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "loci_fast.cli", "playground", "--config", str(CONFIGS["loci-v1"]),
                             "--checkpoint", str(weights)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        match = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "loci-v1, 48x32" in line
        with urllib.request.urlopen(match.group(1) + "api/slot", timeout=30) as response:
            assert json.loads(response.read())["slot"]["kind"] == "loci-v1"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()
