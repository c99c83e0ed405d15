"""The device a training process runs on and its peak FLOP/s, the denominator of MFU.

MFU = model FLOPs/token x tokens/s of all processes / (world size x the per-device peak of train.dtype).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import dist

# Dense peak FLOP/s of one device, (bf16, tf32, fp32), for MFU when train.peak_flops is 0 (CPUs: unknown, MFU left
# empty). fp32 matmuls run on the TF32 tensor cores only when torch's float32 matmul precision is "high"/"medium".
PEAK_FLOPS = {"H200": (989e12, 494e12, 67e12), "H100": (989e12, 494e12, 67e12), "A100": (312e12, 156e12, 19.5e12),
              "L40S": (362e12, 183e12, 91.6e12), "L4": (121e12, 60e12, 30.3e12), "A10G": (70e12, 35e12, 31.2e12),
              "RTX 4090": (165e12, 82.6e12, 82.6e12), "RTX 3090": (71e12, 35.6e12, 35.6e12)}


def peak_flops(train_config, device: torch.device, world_size: int) -> float:
    """Peak FLOP/s of all processes together, for MFU: train.peak_flops (one device's) or a known GPU's peak
    for train.dtype, times the number of processes; 0 when unknown (MFU is left empty)."""
    return (train_config.peak_flops or _known_peak_flops(device, train_config.dtype)) * world_size


def pick_device(name: str, info: dist.DistInfo) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=auto or cpu")
    return torch.device("cuda", info.local_rank)


def _known_peak_flops(device: torch.device, dtype: str) -> float:
    """One device's dense peak for `dtype` ("bf16" | "fp32"), 0 when the device is not in PEAK_FLOPS."""
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    peaks = next((peaks for key, peaks in PEAK_FLOPS.items() if key in name), None)
    if peaks is None:
        return 0.0
    bf16, tf32, fp32 = peaks
    if dtype == "bf16":
        return bf16
    return tf32 if torch.get_float32_matmul_precision() != "highest" else fp32
