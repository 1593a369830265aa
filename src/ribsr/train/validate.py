"""Validation during training: the metrics of ``val.metrics`` over each validation set, and the best values so far."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

from ribsr.inference import Upscaler
from ribsr.metrics import psnr, ssim
from ribsr.model import SST
from ribsr.model.sst import DEFAULT_BIAS_CACHE_BYTES
from ribsr.train.options import MetricOptions, ValOptions

__all__ = ["METRICS", "set_metrics", "update_best", "validation_sets"]

# The metric of each ``val.metrics`` type (the options normalise its aliases, ``psnr`` and ``ssim``).
METRICS = {"calculate_psnr": psnr, "calculate_ssim": ssim}


@torch.no_grad()
def validation_sets(model: SST, val_sets: Mapping[str, Dataset], val: ValOptions,
                    device: torch.device) -> Iterator[tuple[str, dict[str, float]]]:
    """Each validation set's key and mean metrics, one set at a time, of ``model`` upscaling in float32 (tiled past
    ``val.tile``). Once all are done the model is back in its training mode, without the biases cached meanwhile."""
    was_training = model.training
    upscaler = Upscaler(model, tile=val.tile if val.tile else None, dtype=torch.float32, device=device)
    for key, dataset in val_sets.items():
        yield key, set_metrics(upscaler, dataset, val.metrics, device)
    model.train(was_training)
    model.set_bias_cache(DEFAULT_BIAS_CACHE_BYTES)  # drop the biases cached for these weights


@torch.no_grad()
def set_metrics(upscaler: Upscaler, dataset: Dataset, metrics: Mapping[str, MetricOptions],
                device: torch.device) -> dict[str, float]:
    """The mean of each metric over ``dataset``'s items (``lq``, ``gt``, ``gray``: a grayscale file is compared on
    one channel, as ``ribsr evaluate`` does)."""
    sums = dict.fromkeys(metrics, 0.0)
    for i in range(len(dataset)):
        item = dataset[i]
        sr = upscaler.upscale_tensor(item["lq"].unsqueeze(0).to(device))[0].float().clamp(0, 1).cpu()
        gt = item["gt"]
        if item["gray"]:
            sr, gt = sr.mean(0), gt[0]
        for name, m in metrics.items():
            sums[name] += METRICS[m.type](sr, gt, crop_border=m.crop_border, y_channel=m.test_y_channel)
    return {name: s / max(1, len(dataset)) for name, s in sums.items()}


def update_best(best: dict[str, dict[str, Any]], name: str, values: Mapping[str, float],
                metrics: Mapping[str, MetricOptions], iteration: int) -> None:
    """Record in ``best`` (``"set/metric"``: value and iteration) each of the set ``name``'s ``values`` that beats
    the best so far (higher or lower, as its metric's ``better`` says)."""
    for metric, value in values.items():
        higher = metrics[metric].better == "higher"
        key = f"{name}/{metric}"
        old = best.get(key)
        if old is None or (value > old["value"] if higher else value < old["value"]):
            best[key] = {"value": value, "iteration": iteration}
