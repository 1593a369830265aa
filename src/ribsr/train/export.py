"""``ribsr export``: the release weights of a training run, with their config.

Writes our ``.safetensors`` (config in the metadata; loadable by ``ribsr.load_model``, ``ribsr upscale`` and
``ribsr evaluate``) and, beside it, a ``.pth`` in the paper's layout (``params``, ``params_ema``) that the
paper's own code reads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ribsr.build import build_network
from ribsr.checkpoint import save_model
from ribsr.config import config_from_json
from ribsr.files import atomic_write
from ribsr.train.state import ResumeError, latest_checkpoint, load_checkpoint, write_torch

log = logging.getLogger(__name__)

WEIGHTS = ("ema", "raw")


def ema_state(state: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA weights of a training checkpoint as a network state dict (None when the run kept none)."""
    ema = state.get("ema")
    if ema is None:
        return None
    # AveragedModel's state: "module.<name>" for the averaged network, plus its "n_averaged" counter.
    return {k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")}


def find_checkpoint(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint a run directory's newest readable one, or the checkpoint file given."""
    run = Path(run)
    if run.is_file():
        return run, load_checkpoint(run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run directory or checkpoint at {run}")
    found = latest_checkpoint(run)
    if found is None:
        raise ResumeError(f"{run} holds no readable checkpoint (looked in {run / 'checkpoints'})")
    return found


def export_run(run: str | Path, output: str | Path | None = None, weights: str = "ema",
               overwrite: bool = False) -> tuple[Path, Path]:
    """Export a run's newest checkpoint (or a checkpoint file); returns the ``.safetensors`` and ``.pth`` paths.

    ``weights``: ``"ema"`` (the averaged weights; the trained ones when the run kept no average) or
    ``"raw"``. ``output`` defaults to ``RUN/export/<name>.safetensors``. Existing files are replaced only
    with ``overwrite``.
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {list(WEIGHTS)}, got {weights!r}")
    path, state = find_checkpoint(run)
    config = config_from_json(state["config"], source=str(path))
    name = str(state["options"].get("name", "model"))
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    out = Path(output) if output is not None else run_dir / "export" / f"{name}.safetensors"
    if out.suffix != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {out}")
    pth = out.with_suffix(".pth")
    if not overwrite:
        for existing in (p for p in (out, pth) if p.exists()):
            raise FileExistsError(f"{existing} exists; pass --overwrite to replace it")
    raw = state["model"]
    ema = ema_state(state)
    if weights == "ema" and ema is None:
        log.warning("%s kept no EMA weights (train.ema_decay 0): exporting the trained weights", path)
    chosen = ema if weights == "ema" and ema is not None else raw
    model = build_network(config)
    model.load_state_dict(chosen)
    iteration = int(state["iteration"])
    paper: dict[str, Any] = {"params": {k: v.contiguous() for k, v in raw.items()}}
    if ema is not None:
        paper["params_ema"] = {k: v.contiguous() for k, v in ema.items()}
    # Both files or neither: the .pth goes to a temporary file first, renamed only once the .safetensors (itself
    # written atomically) is in place; a failed write (a full disk) leaves the existing files as they were.
    with atomic_write(pth) as pth_tmp:
        write_torch(paper, pth_tmp, pth)
        save_model(model, out, metadata={
            "source": str(path.name), "run": name, "iteration": str(iteration),
            "weights": "ema" if chosen is ema else "raw",
        })
    kind = "ema" if chosen is ema else "raw"
    log.info("exported iteration %d of %s (%s weights) to %s and %s", iteration, name, kind, out, pth)
    return out, pth
