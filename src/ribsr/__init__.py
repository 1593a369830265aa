"""ribsr: single-image super-resolution with SST transformers and Rank-factorized Implicit Neural Bias."""

from ribsr.config import PRESETS, ConfigError, SSTConfig, preset
from ribsr.imresize import imresize
from ribsr.metrics import psnr, ssim

__version__ = "0.1.0"

__all__ = ["PRESETS", "ConfigError", "SSTConfig", "preset", "__version__", "imresize", "psnr", "ssim"]
