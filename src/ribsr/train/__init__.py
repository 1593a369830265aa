"""Training: option files, data, the loop, checkpoints and export."""
