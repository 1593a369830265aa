"""ribsr: single-image super-resolution with RIB transformers (SST, ESC-RIB): Rank-factorized Implicit Neural Bias."""

from ribsr.allocator import tune_cpu_allocator
from ribsr.build import build_model
from ribsr.checkpoint import CheckpointError, convert_checkpoint, load_model, save_model
from ribsr.config import PRESETS, ConfigError, ESCRIBConfig, SSTConfig, preset
from ribsr.imresize import imresize
from ribsr.inference import Upscaler
from ribsr.metrics import psnr, ssim
from ribsr.model import ESCRIB, SST

__version__ = "0.1.0"

__all__ = [
    "ESCRIB", "PRESETS", "SST", "CheckpointError", "ConfigError", "ESCRIBConfig", "SSTConfig", "Upscaler",
    "__version__", "build_model",
    "convert_checkpoint", "imresize", "load_model", "preset", "psnr", "save_model", "ssim",
    "tune_cpu_allocator",
]
