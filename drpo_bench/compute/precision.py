"""The model forwards' precision, one context shared by the training loop and the memory prediction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch


@contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The model forwards' precision: fp32 (none), or autocast to fp16 / bf16 as the public code."""
    if precision == "fp32":
        with nullcontext():
            yield
        return
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
