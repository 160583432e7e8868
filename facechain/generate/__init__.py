"""Portrait generation: config -> candidates (text-to-image / ControlNet, LoRA mixing, fast
mode) -> fusion + ranking (facechain.postprocess) -> PNGs, manifest.json, contact sheet.

    from facechain.generate import load_generate_config, run_job
    result = run_job(load_generate_config("configs/demo.yaml"))
"""

from facechain.generate.config import GenerateConfig, load_generate_config
from facechain.generate.job import JobResult, run_job

__all__ = ["GenerateConfig", "load_generate_config", "run_job", "JobResult"]
