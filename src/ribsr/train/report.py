"""What a training run records (rank 0 only): ``train.log``, ``options.yml``, ``metrics.jsonl`` and TensorBoard."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ribsr.train.options import Options

__all__ = ["RunReport"]


class RunReport:
    """The record of the run of ``opts`` in ``run_dir``; its lines go to ``log`` (and, once started, ``train.log``).

    On the processes other than rank 0 (``main`` False) the ``ribsr`` loggers show warnings only and nothing is
    written.
    """

    def __init__(self, run_dir: Path, opts: Options, *, main: bool, log: logging.Logger) -> None:
        self.run_dir = run_dir
        self.opts = opts
        self.main = main
        self.log = log
        self._tb: Any = None

    def start(self, model: nn.Module, world_size: int, device: torch.device, first_iteration: int) -> None:
        """Open ``train.log`` (once per run folder), write ``options.yml``, log what the run is and open TensorBoard
        when ``logger.use_tb_logger`` asks for it (a warning when it is not installed)."""
        if not self.main:
            logging.getLogger("ribsr").setLevel(logging.WARNING)
            return
        opts = self.opts
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.run_dir / "train.log"
        root = logging.getLogger("ribsr")
        if not any(isinstance(h, logging.FileHandler) and Path(h.baseFilename) == log_path.resolve()
                   for h in root.handlers):
            handler = logging.FileHandler(log_path, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            root.addHandler(handler)
            if root.level == logging.NOTSET or root.level > logging.INFO:
                root.setLevel(logging.INFO)
        options_path = self.run_dir / "options.yml"
        options_path.write_text(yaml.safe_dump(opts.raw, sort_keys=False), encoding="utf-8")
        n_params = sum(p.numel() for p in model.parameters())
        self.log.info("run %s in %s: %s, %d parameters, %d process(es) on %s, global batch %d, iterations %d..%d",
                      opts.name, self.run_dir, opts.network.to_json(), n_params, world_size, device,
                      opts.train_data.batch_size_per_gpu * world_size, first_iteration, opts.train.total_iter)
        if opts.logger.use_tb_logger:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.log.warning("logger.use_tb_logger is set but tensorboard is not installed "
                                 "(pip install 'ribsr[tensorboard]'): logging to %s only", log_path)
            else:
                self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def scalars(self, it: int, values: Mapping[str, float], quiet: bool = False) -> None:
        """Record ``values`` of iteration ``it``: a log line (unless ``quiet``), a ``metrics.jsonl`` line and the
        finite ones in TensorBoard."""
        if not self.main:
            return
        if not quiet:
            self.log.info("iteration %d/%d: %s", it, self.opts.train.total_iter,
                          ", ".join(f"{k} {v:.6g}" for k, v in values.items()))
        self._write_metrics(it, values)
        if self._tb is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self._tb.add_scalar(k, v, it)

    def validation(self, it: int, name: str, values: Mapping[str, float]) -> None:
        """Record the metrics of the validation set ``name`` at iteration ``it`` (as ``val/NAME/METRIC``)."""
        if not self.main:
            return
        self.log.info("iteration %d: %s %s", it, name, ", ".join(f"{m} {v:.4f}" for m, v in values.items()))
        self.scalars(it, {f"val/{name}/{m}": v for m, v in values.items()}, quiet=True)

    def close(self) -> None:
        """Close TensorBoard's writer, if open."""
        if self._tb is not None:
            self._tb.close()

    def _write_metrics(self, it: int, values: Mapping[str, float]) -> None:
        """Append to ``metrics.jsonl`` (one JSON object per line: iteration and values) for plots."""
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": it, **values}) + "\n")
