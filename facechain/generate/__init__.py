"""Portrait generation: config -> candidates (text-to-image / ControlNet, LoRA mixing, fast
mode) -> fusion + ranking (facechain.generate.rank) -> PNGs, manifest.json, contact sheet.

    from facechain.generate import load_generate_config, run_job
    result = run_job(load_generate_config("configs/demo.yaml"))
"""

from facechain.generate.manifest import GenerationManifest

__all__ = ["GenerateConfig", "load_generate_config", "run_job", "JobResult", "GenerationManifest"]


def __getattr__(name: str):
    # The config and the job import torch and diffusers; load them on first use, so that reading a
    # manifest (batch, server, eval) stays cheap.
    if name in ("GenerateConfig", "load_generate_config"):
        from facechain.generate import config

        return getattr(config, name)
    if name in ("run_job", "JobResult"):
        from facechain.generate import job

        return getattr(job, name)
    raise AttributeError(f"module 'facechain.generate' has no attribute {name!r}")
