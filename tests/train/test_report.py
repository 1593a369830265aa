"""A run's record: metrics.jsonl lines and log lines on rank 0, nothing written elsewhere."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from ribsr.train.options import load_options
from ribsr.train.report import RunReport

LIGHT = Path(__file__).parent / "options" / "train_SST_light_x2.yml"


def test_scalars_and_validation_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    opts = load_options(LIGHT)
    log = logging.getLogger("ribsr.test_report")
    report = RunReport(tmp_path, opts, main=True, log=log)
    with caplog.at_level(logging.INFO, logger=log.name):
        report.scalars(3, {"loss": 0.25, "lr": 1e-3})
        report.validation(4, "Set5", {"psnr": 30.123456, "ssim": 0.9})
    lines = [r.getMessage() for r in caplog.records if r.name == log.name]  # options' own notices left out
    assert lines == ["iteration 3/500000: loss 0.25, lr 0.001", "iteration 4: Set5 psnr 30.1235, ssim 0.9000"]
    lines = (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == ['{"iteration": 3, "loss": 0.25, "lr": 0.001}',
                     '{"iteration": 4, "val/Set5/psnr": 30.123456, "val/Set5/ssim": 0.9}']
    assert json.loads(lines[1])["val/Set5/psnr"] == 30.123456

    other = RunReport(tmp_path / "other", opts, main=False, log=log)
    other.scalars(3, {"loss": 0.25})
    other.validation(4, "Set5", {"psnr": 30.0})
    assert not (tmp_path / "other").exists()
