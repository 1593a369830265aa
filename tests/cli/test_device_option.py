"""``--device`` takes the same values in every command that runs a network (issue 20, item 6)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from ribsr.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def dataset(tmp_path):
    hr = tmp_path / "Mini" / "HR"
    hr.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 24, 3)).astype(np.uint8)).save(hr / "a.png")
    return tmp_path / "Mini"


def test_every_network_command_documents_the_same_device_values():
    parser = build_parser()
    helps = {}
    for name in ("upscale", "evaluate", "compare", "serve", "bench attention", "bench model"):
        sub = parser
        for word in name.split():
            sub = next(a for a in sub._actions if a.dest in ("command", "bench_command") or
                       hasattr(a, "choices") and isinstance(a.choices, dict) and word in a.choices).choices[word]
        (action,) = [a for a in sub._actions if a.dest == "device"]
        helps[name] = action.help.split(" (default")[0]
    assert len(set(helps.values())) == 1, helps
    assert "auto" in helps["upscale"] and "cuda:N" in helps["upscale"]


def test_evaluate_and_bench_accept_auto(dataset, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["evaluate", "--model", "default", "--scale", "2", "--data", str(dataset), "--device", "auto",
                 "--no-progress", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"][0]["images"] == 1
    bench = tmp_path / "b.json"
    assert main(["bench", "attention", "--windows", "4", "--image", "8", "--heads", "1", "--head-dim", "4",
                 "--rank", "2", "--repeats", "1", "--warmup", "0", "--no-memory", "--device", "auto",
                 "--json", str(bench)]) == 0
    assert json.loads(bench.read_text())["device"].startswith("cpu")  # auto is the CPU here


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", "bicubic", "--scale", "2", "--data", "DATA"],
    ["bench", "attention", "--windows", "4", "--image", "8", "--repeats", "1", "--warmup", "0", "--no-memory"],
])
def test_an_unknown_device_is_named_by_every_command(argv, dataset, capsys):
    argv = [str(dataset) if a == "DATA" else a for a in argv]
    assert main([*argv, "--device", "tpu9"]) == 2
    assert "unknown device 'tpu9': use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_train_takes_auto():
    args = build_parser().parse_args(["train", "x.yml", "--device", "auto"])
    assert args.device == "auto"
    assert build_parser().parse_args(["train", "x.yml"]).device == "auto"
