"""What ``device`` and ``dtype`` ``"auto"`` mean for every stage, and the dtype keyword diffusers reads."""

from __future__ import annotations

DEVICE_HELP = "auto (the first CUDA GPU, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps"
DTYPE_HELP = "auto (float16 on a GPU, float32 on the CPU), float32, float16 or bfloat16"


def resolve_device(name: str = "auto"):
    """``"auto"``: the first CUDA GPU, else Apple's MPS, else the CPU; any other name as torch reads it."""
    import torch

    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device):
    """``"auto"``: float16 on a GPU (CUDA or MPS), float32 on the CPU; else the named torch dtype."""
    import torch

    if name == "auto":
        return torch.float16 if torch.device(device).type in ("cuda", "mps") else torch.float32
    return getattr(torch, name)


def dtype_kwargs(dtype) -> dict:
    """``{"dtype": d}`` on diffusers versions that renamed ``torch_dtype`` (0.36+), else ``{"torch_dtype": d}``."""
    try:
        from diffusers.utils import deprecation_utils

        renamed = hasattr(deprecation_utils, "_resolve_dtype")
    except ImportError:
        renamed = False
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def is_half(dtype) -> bool:
    """Whether ``dtype`` (a torch dtype or its name) is float16: the fp16 weight files are then preferred."""
    return str(dtype).replace("torch.", "") == "float16"
