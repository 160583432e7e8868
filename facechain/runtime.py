"""Process settings a training run makes and gives back: CPU threads, mixed precision, and accelerate's
process-wide state. Every trainer (the face LoRA, the adapters) and the batch runner take them from here.

    with restored_after_run():
        set_threads(0)
        accelerator = Accelerator(mixed_precision=resolve_mixed_precision("auto"))
        ...
"""

from __future__ import annotations

import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

logger = logging.getLogger(__name__)


def resolve_mixed_precision(flag: str) -> str:
    """``auto``: bf16 on a CUDA GPU that supports it, fp16 on an older one, fp32 ("no") elsewhere
    (CPU autocast in bf16 is slower than fp32 on most CPUs, and MPS has no fused AdamW)."""
    if flag != "auto":
        return flag
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of frozen weights under a resolved ``mixed_precision`` setting."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def note_accelerate_mixed_precision(flag: str) -> None:
    """``--mixed_precision`` governs, also under ``accelerate launch``: accelerate passes its config's
    (or the ``--mixed_precision`` launch option's) setting as ACCELERATE_MIXED_PRECISION, which the
    trainer's flag overrides. Say so in one line when accelerate asks for mixed precision and the
    flag differs (accelerate's default "no" is not worth a line)."""
    env = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if env and env.lower() != "no" and env.lower() != flag:
        logger.warning("mixed precision: accelerate's setting is %r (accelerate config / ACCELERATE_MIXED_PRECISION) but "
                       "the trainer uses its --mixed_precision %r; pass --mixed_precision %s to use accelerate's",
                       env, flag, env)


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity, bounded by a cgroup v2/v1 CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = None
    try:
        fields = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if fields and fields[0] != "max":
            quota = int(fields[0]) / int(fields[1])
    except (OSError, ValueError, IndexError):
        try:
            q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            if q > 0:
                quota = q / int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def set_threads(requested: int) -> int:
    """Set torch's intra-op threads: ``requested``, or (0) this process's share of :func:`usable_cpus`
    among the processes accelerate started on this machine. ``accelerate launch`` sets
    OMP_NUM_THREADS=1 unless the user set it, which left the trainer on one core; under the launcher
    that value is not used (``train_lora.sh`` passes a user's own OMP_NUM_THREADS on as
    --num_threads); run without a launcher, a set OMP_NUM_THREADS is the user's and is used."""
    n = requested
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by accelerate launch, with its OMP_NUM_THREADS
    if n == 0 and not launched and (os.environ.get("OMP_NUM_THREADS") or "").isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])  # the user's own setting, run without a launcher
    if n == 0:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or 1)
        n = max(1, usable_cpus() // max(1, local))
    torch.set_num_threads(n)
    return n


def release_accelerator_state() -> None:
    """accelerate keeps one process-wide AcceleratorState (mixed precision, ...); clear it so that
    a later training run in the same process (a UI training several people, tests) may use other
    settings. The process group (PartialState) is kept. accelerate's own tests reset it the same way."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


@contextmanager
def restored_after_run() -> Iterator[None]:
    """Give the caller back its torch thread count and a fresh accelerate state when the block ends,
    however it ends (a UI or tests training in-process)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        release_accelerator_state()
