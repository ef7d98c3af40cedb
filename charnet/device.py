"""Devices: which torch device a name means, and what its arithmetic can do.

Shared by training and inference (neither imports the other for it).
"""

from __future__ import annotations

import torch

from charnet.errors import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``auto|cpu|cuda|mps``; auto prefers CUDA, then MPS."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", "cuda was asked for, but PyTorch sees no CUDA device")
        return torch.device("cuda", local_rank)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device", "mps was asked for, but this PyTorch has no MPS device")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` is a CPU whose oneDNN has native bfloat16 products (AVX512-BF16,
    AMX). Without them bf16 is emulated: slower than float32, and oneDNN's LSTM refuses
    it outright."""
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
