"""The device a process runs on (`resolve_device`: training's train.device, every command's --device), the dtype
it computes in (`resolve_dtype`: --dtype), and a device's peak FLOP/s, the denominator of MFU.

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


# --dtype: the autocast dtype of sampling (None: plain fp32). bf16 and fp16 change which paths a seed gives and make
# an origin's paths depend on the origins sharing its engine call (Forecaster), so they are opt-in.
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, flag: str = "--device", local_rank: int | None = None) -> torch.device:
    """The device `name` names: auto (CUDA, then MPS, then the CPU), cpu, cuda, cuda:N or mps. Under torchrun
    (or with `local_rank`) cuda and auto mean this process's GPU, cuda:LOCAL_RANK. A device this machine lacks is
    a ConfigError naming `flag`, raised before any work."""
    text = str(name).strip().lower()
    kind, _, index = text.partition(":")
    if kind == "auto" and not index:
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"{flag} {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise ConfigError(f"{flag}={name} but this machine has no Apple MPS device; use {flag}=auto or cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag}={name} but no CUDA device is available (torch {torch.__version__}); use "
                          f"{flag}=auto or cpu")
    count = torch.cuda.device_count()
    rank = dist.dist_env().local_rank if local_rank is None else local_rank
    number = int(index) if index else rank
    if number >= count:
        raise ConfigError(f"{flag}={name} but this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", number)


def resolve_dtype(name: str, device: torch.device, flag: str = "--dtype") -> torch.dtype | None:
    """The autocast dtype `name` (fp32 | bf16 | fp16) names on `device`: None for fp32; a ConfigError naming `flag`
    when the device cannot compute in it."""
    if name not in AUTOCAST_DTYPES:
        raise ConfigError(f"{flag} {name!r} is not a dtype; use {', '.join(AUTOCAST_DTYPES)}")
    dtype = AUTOCAST_DTYPES[name]
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{flag}=bf16 but {torch.cuda.get_device_name(device)} has no bf16 support; use {flag} "
                          "fp16 or fp32")
    return dtype


def pick_device(name: str, info: dist.DistInfo) -> torch.device:
    """train.device: auto is this process's GPU when CUDA is available, else the CPU (training never picks MPS by
    itself; MPS is for sampling commands' --device)."""
    if name == "auto" and not torch.cuda.is_available():
        name = "cpu"
    return resolve_device(name, "train.device", info.local_rank)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


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


def compile_unavailable() -> str | None:
    """Why torch.compile cannot run here (inductor builds its CPU kernels with a C++ compiler), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return "torch.compile needs a C++ compiler (g++ or clang++ on PATH, or CXX)"
    return None
