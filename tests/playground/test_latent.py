"""--latent files: JSON and safetensors, one slot or several, and clear errors for anything else."""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from loci_fast.playground.latent import read_latent


def test_json_single_and_multi_slot(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"gestalt": [0, 1, 1, 0], "position": [0.5, -0.25, 0.1]}))
    latent = read_latent(one, 4, 3)
    assert latent.gestalt == [0.0, 1.0, 1.0, 0.0] and latent.position == [0.5, -0.25, 0.1]
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"gestalt": [[0, 0], [1, 0], [1, 1]], "position": [[0, 0, 0], [1, 1, 1], [2, 2, 2]]}))
    latent = read_latent(many, 2, 3, slot=2)
    assert latent.gestalt == [1.0, 1.0] and latent.position == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match=r"holds 3 slots; pass --slot 0\.\.2"):
        read_latent(many, 2, 3, slot=3)


def test_safetensors_rows(tmp_path):
    from safetensors.torch import save_file

    gestalt = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    position = torch.tensor([[0.1, 0.2, 0.3], [-0.4, 0.5, 0.06]])
    save_file({"gestalt": gestalt, "position": position}, str(tmp_path / "slots.safetensors"))
    latent = read_latent(tmp_path / "slots.safetensors", 3, 3, slot=1)
    assert latent.gestalt == [1.0, 1.0, 0.0]
    assert latent.position == pytest.approx([-0.4, 0.5, 0.06])
    save_file({"gestalt": gestalt}, str(tmp_path / "half.safetensors"))
    with pytest.raises(ValueError, match="no tensor 'position'"):
        read_latent(tmp_path / "half.safetensors", 3, 3)


@pytest.mark.parametrize("text, problem", [
    ('{"gestalt": [0, 1]}', '"gestalt" and "position"'),
    ('{"gestalt": [0, 1, 0], "position": [0, 0, 0.1]}', "has 3 values, this model needs 2"),
    ('{"gestalt": [0, 1], "position": [0, 0, Infinity]}', "non-finite"),
    ('{"gestalt": [0, true], "position": [0, 0, 0.1]}', "list of 2 numbers"),
    ("{nope", "not valid JSON"),
])
def test_bad_json_is_named(tmp_path, text, problem):
    path = tmp_path / "slot.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=problem):
        read_latent(path, 2, 3)


def test_pickles_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "slot.pickle"
    path.write_bytes(pickle.dumps({"gestalt": [0, 1], "position": [0, 0, 0.1]}))
    with pytest.raises(ValueError, match="pickles are never read"):
        read_latent(path, 2, 3)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_latent(tmp_path / "bad.safetensors", 2, 3)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_latent(tmp_path / "missing.json", 2, 3)


def test_cli_starts_from_the_latent(tmp_path, weights):
    from loci_fast.playground.command import build_server

    from .conftest import playground_args

    path = tmp_path / "slot.json"
    path.write_text(json.dumps({"gestalt": [1, 0, 1, 0, 1, 0, 1, 0], "position": [0.2, -0.3, 0.12]}))
    server = build_server(playground_args("loci-v1", weights, latent=path))
    try:
        assert server.latent.to_json() == {"gestalt": [1.0, 0.0] * 4, "position": [0.2, -0.3, 0.12]}
    finally:
        server.server_close()
    path.write_text(json.dumps({"gestalt": [1] * 97, "position": [0, 0, 0, 0.1]}))  # a Loci-s latent
    with pytest.raises(ValueError, match="this model needs 8"):
        build_server(playground_args("loci-v1", weights, latent=path))
