"""Where a model runs and in which floating-point type: the two settings every loader takes.

    model = Transformer.from_pretrained(d, device="cuda", dtype="bfloat16")
    model.device, model.dtype          # what every inference path builds its tensors with

Inference code never relies on torch's default device: each tensor it creates names the model's
device (token ids, masks, positions, decoding state), so a model on a GPU gets its inputs there.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a model may be loaded in (half types for inference only)."""


def as_dtype(value: str | torch.dtype | None) -> torch.dtype:
    """None -> float32; a name from DTYPES ("bf16" / "fp16" / "fp32" too) or a torch dtype."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        if value not in DTYPES.values():
            raise ValueError(f"unsupported model dtype {value}; valid: {', '.join(DTYPES)}")
        return value
    name = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32",
            "float": "float32"}.get(str(value).lower(), str(value).lower())
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[name]


def as_device(value: str | torch.device | None) -> torch.device:
    """None -> the CPU (never torch's default device, which a caller may have changed); "auto" ->
    the first GPU when one is visible, else the CPU; else any torch device string."""
    if value is None:
        return torch.device("cpu")
    if isinstance(value, torch.device):
        return value
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"unknown device {value!r} (e.g. cpu, cuda, cuda:1, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {value!r} asked for but no CUDA GPU is visible to this process")
    return device
