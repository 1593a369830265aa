"""Validation during training: the best values kept per set and metric."""

from __future__ import annotations

from ribsr.train.options import MetricOptions
from ribsr.train.validate import update_best


def test_update_best_keeps_the_better_value_by_each_metrics_direction() -> None:
    metrics = {"psnr": MetricOptions(type="calculate_psnr"), "lpips": MetricOptions(type="calculate_ssim",
                                                                                      better="lower")}
    best: dict = {}
    update_best(best, "Set5", {"psnr": 30.0, "lpips": 0.2}, metrics, 10)
    update_best(best, "Set5", {"psnr": 29.0, "lpips": 0.1}, metrics, 20)
    update_best(best, "Set14", {"psnr": 28.0}, metrics, 20)
    assert best == {"Set5/psnr": {"value": 30.0, "iteration": 10}, "Set5/lpips": {"value": 0.1, "iteration": 20},
                    "Set14/psnr": {"value": 28.0, "iteration": 20}}
