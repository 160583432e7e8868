"""One GPU run that measures every GPU figure the issues name, on full-size random-weight SD1.5 and
SDXL built from their published configs, through the project's own code paths.

On a GPU machine with the project's dependencies installed (nothing is downloaded):

    python benchmarks/gpu.py --out results.jsonl          # every part, about 7 minutes on an H100/H200
    python benchmarks/gpu.py --list                       # the parts and their estimated cost
    python benchmarks/gpu.py --only generate_sd15,template_sd15 --out more.jsonl   # some parts again
    python benchmarks/gpu.py --write-results results.jsonl    # rows -> benchmarks/RESULTS.md "GPU figures"
    python benchmarks/gpu.py --smoke --out smoke.jsonl    # the same code on tiny models on the CPU

On a lent machine whose results come back from a folder ($OUT): ``python benchmarks/gpu.py --out
$OUT/results.jsonl --results-md $OUT/RESULTS.md`` (run it with a timeout a minute over ``--budget-s``),
then here ``python benchmarks/gpu.py --write-results results.jsonl``.

Every figure is printed as it is measured and appended to ``--out`` (JSON lines: one ``machine`` row,
then ``figure`` rows, and one ``part`` row per part with its status), so a killed run keeps what it
measured. Each part runs in its own try/except under its own time limit; a part whose estimated cost
no longer fits in ``--budget-s`` is skipped (and says so in its row). At the end the rows are
written into the "GPU figures" section of benchmarks/RESULTS.md; ``--write-results FILE`` does the
same for rows fetched back from another machine.

The models are the real architectures with random weights (timings and memory are real, pictures are
noise), saved as ordinary diffusers folders (safetensors, float16) and loaded by the stages exactly
as a user's model: training through ``sh train_lora.sh`` as the README says, generation through
run_inference.py's config path (``load_generate_config`` + ``run_job``), templates through
``run_template``, stylization through ``stylize``. Floors: the UNet's forward + backward alone
(training) and one plain diffusers pipeline call (generation).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_sh_bench import ROOT, _env, _photos  # noqa: E402  (train_lora.sh as users run it, the two photos)

RESULTS_MD = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- gpu.py: begin -->", "<!-- gpu.py: end -->"
CONFIGS_DIR = ROOT / "tests" / "fixtures" / "configs"  # the published configs, when the repository has them

# --------------------------------------------------------------------------- published configs
# Used only when tests/fixtures/configs/ holds no config of the family. Values copied from the model
# repositories' config files (diffusers layout): stable-diffusion-v1-5/stable-diffusion-v1-5 (formerly
# runwayml/) unet/, vae/, text_encoder/config.json and scheduler/scheduler_config.json;
# stabilityai/stable-diffusion-xl-base-1.0 unet/, vae/, text_encoder/, text_encoder_2/config.json and
# scheduler/scheduler_config.json. Keys left at the classes' defaults are omitted.
_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
             "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
_CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768}
BUILTIN_CONFIGS = {
    "sd15": {
        "unet": {"_class_name": "UNet2DConditionModel", "sample_size": 64, "in_channels": 4, "out_channels": 4,
                 "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
                 "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
                 "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2, "cross_attention_dim": 768,
                 "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
                 "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1},
        "vae": {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "sample_size": 512, "act_fn": "silu"},
        "text_encoder": dict(_CLIP_L),
        "scheduler": {"_class_name": "PNDMScheduler", **_SCHEDULE, "clip_sample": False},
    },
    "sdxl": {
        "unet": {"_class_name": "UNet2DConditionModel", "sample_size": 128, "in_channels": 4, "out_channels": 4,
                 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                 "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "transformer_layers_per_block": [1, 2, 10],
                 "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048, "use_linear_projection": True,
                 "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
                 "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu",
                 "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1},
        "vae": {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
                "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
                "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
                "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True, "act_fn": "silu"},
        "text_encoder": dict(_CLIP_L),
        "text_encoder_2": {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
                           "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu",
                           "projection_dim": 1280},
        "scheduler": {"_class_name": "EulerDiscreteScheduler", **_SCHEDULE, "interpolation_type": "linear",
                      "prediction_type": "epsilon", "timestep_spacing": "leading", "use_karras_sigmas": False},
    },
}
COMPONENT_FILES = {"unet": "unet/config.json", "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
                   "text_encoder_2": "text_encoder_2/config.json", "scheduler": "scheduler/scheduler_config.json"}


def published_configs(family: str, configs_dir: Path = CONFIGS_DIR) -> tuple[dict, str, Path | None]:
    """(component configs, where they came from, tokenizer folder or None) for ``family``.

    Looks for a diffusers-layout folder (``unet/config.json`` ...) under ``configs_dir`` whose UNet is of
    ``family`` (read from the config: SDXL's ``addition_embed_type`` is ``text_time``, never guessed from a
    name); falls back to :data:`BUILTIN_CONFIGS`."""
    for unet_file in sorted(configs_dir.glob("**/unet/config.json")) if configs_dir.is_dir() else []:
        folder = unet_file.parent.parent
        unet = json.loads(unet_file.read_text())
        if ("sdxl" if unet.get("addition_embed_type") == "text_time" else "sd15") != family:
            continue
        if unet.get("cross_attention_dim") not in (768, 2048):  # SD2 (1024) and others are not what we measure
            continue
        out = {}
        for name, rel in COMPONENT_FILES.items():
            if (folder / rel).is_file():
                out[name] = json.loads((folder / rel).read_text())
            elif name in BUILTIN_CONFIGS[family]:
                out[name] = BUILTIN_CONFIGS[family][name]
        tok = folder / "tokenizer"
        has_vocab = (tok / "vocab.json").is_file() and (tok / "merges.txt").is_file()
        return out, str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder), tok if has_vocab else None
    return BUILTIN_CONFIGS[family], "benchmarks/gpu.py BUILTIN_CONFIGS (the published config files' values)", None


def clip_tokenizer(vocab_folder: Path | None):
    """(tokenizer, what it is). The one place the benchmark's tokenizer is chosen: the published
    vocabulary when the configs folder ships one, else facechain.testing's byte-level CLIP tokenizer
    (one token per character, so prompts come out longer than with the real vocabulary: the figures
    say so)."""
    from transformers import CLIPTokenizer

    if vocab_folder is not None:
        return CLIPTokenizer.from_pretrained(str(vocab_folder)), f"CLIP vocabulary from {vocab_folder.name}/"
    from facechain.errors import InputError
    from facechain.testing import make_clip_tokenizer, make_tokenizer

    with tempfile.TemporaryDirectory(prefix="gpu-bench-tok-") as tmp:
        try:  # CLIP's real 49,408-token vocabulary, from open-clip-torch's BPE file (the test extra)
            tok = make_clip_tokenizer(tmp)
            return tok, "CLIP's vocabulary (49,408 tokens, built from open-clip-torch's BPE file)"
        except InputError as exc:  # open-clip-torch not installed: say so in every row that tokenizes
            tok = make_tokenizer(tmp)
            why = str(exc).splitlines()[0][:120]
    return tok, (f"byte-level CLIP tokenizer ({len(tok)} symbols; prompts tokenize longer than with the real "
                 f"vocabulary: {why})")


def _text_config(cfg: dict, tok):
    from transformers import CLIPTextConfig

    keep = {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("architectures", "transformers_version")}
    keep.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return CLIPTextConfig(**keep)


# --smoke: the same configs with every size cut down (facechain.testing's tiny models' sizes), so the smoke
# run goes through the same builder, config lookup and tokenizer as the full run.
_TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "projection_dim": 32}
_TINY_VAE = {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}
TINY_OVERRIDES = {
    "sd15": {"unet": {"block_out_channels": [16, 16, 32, 32], "attention_head_dim": 4, "cross_attention_dim": 32,
                      "norm_num_groups": 8, "sample_size": 8},
             "vae": _TINY_VAE, "text_encoder": _TINY_TEXT},
    "sdxl": {"unet": {"block_out_channels": [16, 32, 32], "transformer_layers_per_block": [1, 1, 2],
                      "attention_head_dim": [2, 4, 8], "cross_attention_dim": 64, "addition_time_embed_dim": 8,
                      "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 time ids x 8 + pooled text (32)
                      "norm_num_groups": 8, "sample_size": 8},
             "vae": _TINY_VAE, "text_encoder": _TINY_TEXT, "text_encoder_2": _TINY_TEXT},
}


def build_full_model(family: str, folder: Path, device: str, dtype, tiny: bool = False) -> dict:
    """Save ``family``'s full architecture (from :func:`published_configs`) with seeded random weights as
    a diffusers folder (safetensors, ``dtype``). Weights are initialised on ``device`` (fast on a GPU).
    ``tiny``: every size cut down by :data:`TINY_OVERRIDES` (for --smoke). Returns what was built."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    configs, source, vocab = published_configs(family)
    if tiny:
        configs = {k: {**v, **TINY_OVERRIDES[family].get(k, {})} for k, v in configs.items()}
    tok, tok_kind = clip_tokenizer(vocab)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        te = CLIPTextModel(_text_config(configs["text_encoder"], tok))
        te2 = CLIPTextModelWithProjection(_text_config(configs["text_encoder_2"], tok)) if family == "sdxl" else None
    # a trained CLIP's final LayerNorm has a shift; at random init's 0, SD1.5's conditioning has mean 0 and
    # AUTOMATIC1111's weighting (the default) has no mean to restore
    from facechain.testing import trained_final_norm

    trained_final_norm(te, seed=0)
    sched_cfg = configs["scheduler"]
    scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                         unet=unet, scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to("cpu", dtype)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("unet", unet), ("vae", vae), ("text_encoder", te), ("text_encoder_2", te2)) if m is not None}
    return {"params": params, "configs": source + (" (sizes cut down for --smoke)" if tiny else ""), "tokenizer": tok_kind,
            "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())}


# --------------------------------------------------------------------------- sizes per profile


@dataclass(frozen=True)
class Profile:
    """How big each measurement is: ``full`` (the issues' figures, on a GPU) or ``smoke`` (tiny models, CPU)."""

    name: str
    sd15_px: int
    sdxl_px: int
    train_steps: int  # steps of each train_lora.sh run
    train_warmup: int  # first steps left out of the step-time median (CUDA warm-up, allocator)
    floor_steps: int
    candidates: int  # generation: candidates per job (FaceChain: 10)
    steps: int  # generation steps (FaceChain: 40)
    fast_steps: int  # fast mode (GenerateConfig's default: 6)
    sdxl_candidates: int  # SDXL + ControlNet + IP-Adapter: one batch (GenerateConfig's batch_size default: 5)
    sdxl_steps: int
    template_steps: int  # FaceChain: 40, strength 0.65 of them run
    stylize_steps: int  # StylizeConfig's default: 50
    postprocess_photos: int
    budget_s: float


FULL = Profile("full", 512, 1024, train_steps=60, train_warmup=10, floor_steps=20, candidates=10, steps=40, fast_steps=6,
               sdxl_candidates=5, sdxl_steps=20, template_steps=40, stylize_steps=50, postprocess_photos=10, budget_s=420)
SMOKE = Profile("smoke", 64, 64, train_steps=4, train_warmup=1, floor_steps=2, candidates=4, steps=2, fast_steps=2,
                sdxl_candidates=2, sdxl_steps=2, template_steps=4, stylize_steps=4, postprocess_photos=2, budget_s=900)


# --------------------------------------------------------------------------- the run's state and rows


class PartTimeout(BaseException):
    """A part past its time limit. A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    in the library (a style's failure is recorded, the job goes on) takes it for the part's own error."""


class Skip(Exception):
    """A part that cannot run (what it needs failed); its row says why."""


@dataclass
class Bench:
    profile: Profile
    work: Path
    out: Path
    device: str
    started: float = field(default_factory=time.perf_counter)
    models: dict[str, Path] = field(default_factory=dict)
    assets: dict[str, object] = field(default_factory=dict)
    figures: dict[tuple[str, str], float] = field(default_factory=dict)
    part: str = ""
    deadline: float = float("inf")

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def write(self, row: dict) -> None:
        with self.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def figure(self, name: str, value: float, unit: str, note: str = "") -> None:
        """Print and keep one measured figure of the running part."""
        self.figures[(self.part, name)] = value
        self.write({"kind": "figure", "part": self.part, "figure": name, "value": float(f"{value:.5g}"), "unit": unit,
                    "note": note})
        print(f"  {self.part}: {name} = {value:.4g} {unit}" + (f"  ({note})" if note else ""), flush=True)

    def asset(self, name: str, make: Callable[[], object]):
        """Something several parts use (a LoRA, a photo folder), made by the first part that needs it."""
        if name not in self.assets:
            self.assets[name] = make()
        return self.assets[name]

    def model(self, family: str) -> Path:
        if family not in self.models:
            raise Skip(f"needs the {family} model, which build_{family} did not make")
        return self.models[family]

    def reset_peak(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float:
        """CUDA max allocated since :meth:`reset_peak` (GPU), or this process's max RSS (CPU)."""
        import resource

        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def px(self, family: str) -> int:
        return self.profile.sd15_px if family == "sd15" else self.profile.sdxl_px

    @property
    def memory_unit(self) -> str:
        return "MiB (CUDA max allocated)" if self.cuda else "MiB (process max RSS)"

    def run_cmd(self, cmd: list[str]) -> float:
        """Run a command in its own process group until the part's deadline; seconds. On a timeout or an
        error the whole group (e.g. train_lora.sh's trainer) is stopped."""
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(c) for c in cmd], env=_env(), cwd=self.work, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        limit = max(1.0, self.deadline - time.perf_counter())
        try:
            output, _ = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise PartTimeout(f"{Path(str(cmd[1])).name if len(cmd) > 1 else cmd[0]} stopped at the part's time limit "
                              f"({limit:.0f} s left)") from None
        except BaseException:
            _stop_group(proc)
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} ... exited with {proc.returncode}:\n{output[-3000:]}")
        return time.perf_counter() - t0


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`PartTimeout` in this (main) thread after ``seconds``."""
    def on_alarm(signum, frame):
        raise PartTimeout(f"stopped at its time limit of {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- parts


@dataclass(frozen=True)
class Part:
    name: str
    fn: Callable[[Bench], None]
    cost_s: float  # estimated seconds on an H100/H200 (full profile)
    smoke_cost_s: float  # estimated seconds of --smoke on a 2-core CPU
    what: str
    limit_s: float | None = None  # its own time limit; default from the estimate (see limit())

    def cost(self, profile: Profile) -> float:
        return self.cost_s if profile.name == "full" else self.smoke_cost_s

    def limit(self, profile: Profile) -> float:
        """Its own time limit: ``limit_s``, else three times its estimate and at least a minute more than it."""
        return self.limit_s if self.limit_s is not None else max(3 * self.cost(profile), self.cost(profile) + 60)


def _build(b: Bench, family: str) -> None:
    import torch

    folder = b.work / f"model-{family}"
    t0 = time.perf_counter()
    info = build_full_model(family, folder, b.device, torch.float16 if b.cuda else torch.float32, tiny=b.profile.name == "smoke")
    b.write({"kind": "model", "family": family, **info})
    b.figure("build and save", time.perf_counter() - t0, "s", "random weights initialised on the device")
    b.figure("parameters (UNet)", info["params"]["unet"] / 1e6, "M", f"all: {sum(info['params'].values()) / 1e6:.0f} M")
    b.figure("folder size", info["bytes"] / 2**30, "GiB", f"{'float16' if b.cuda else 'float32'} safetensors")
    b.models[family] = folder


def _processed(b: Bench) -> Path:
    from facechain.testing import make_processed_folder

    return b.asset("processed", lambda: make_processed_folder(b.work / "processed", n=2))


def _two_photos(folder: Path) -> Path:
    _photos(folder)  # the astronaut and its mirror image, as train_sh_bench
    return folder


def _train(b: Bench, family: str) -> None:
    from facechain.io import read_jsonl

    px = b.px(family)
    model = b.model(family)
    photos = b.asset("photos", lambda: _two_photos(b.work / "photos"))
    out = b.work / f"train-{family}-{time.time_ns()}"
    steps = b.profile.train_steps
    precision = "bf16" if b.cuda else "no"
    wall = b.run_cmd(["sh", ROOT / "train_lora.sh", model, "", "", photos, out.with_name(out.name + "-processed"), out,
                      "--resolution", px, "--max_train_steps", steps, "--checkpointing_steps", steps, "--face_backend", "none",
                      "--mixed_precision", precision, "--no-progress"])
    log = read_jsonl(out / "train_log.jsonl")
    start = next(r for r in log if r.get("event") == "start")
    if b.cuda and not str(start.get("device")).startswith("cuda"):
        raise RuntimeError(f"the trainer ran on {start.get('device')}, not the GPU (train_log.jsonl's start row: {start})")
    step_s = statistics.median(r["seconds"] for r in log if "loss" in r and r["step"] > b.profile.train_warmup)
    b.figure("steps/s", 1 / step_s, "steps/s", f"sh train_lora.sh, {px} px, batch 1, {start.get('mixed_precision')} on "
             f"{start.get('device')}, rank 4; median step after {b.profile.train_warmup} warm-up steps (train_log.jsonl)")
    peak = next((r.get("peak_training_memory_mb") for r in log if r.get("event") == "final"), None)
    if peak is not None:
        b.figure("peak training memory", peak, "MiB (CUDA max allocated)", "the trainer's own figure (training loop)")
    b.figure("train_lora.sh wall time", wall, "s", f"{steps} steps: preprocessing, loading, caching, saving included")


def _floor(b: Bench, family: str) -> None:
    from train_bench import run_unet

    px = b.px(family)
    model = b.model(family)
    args = SimpleNamespace(mixed_precision="bf16" if b.cuda else "no", resolution=px, warmup=3, steps=b.profile.floor_steps,
                           gradient_checkpointing=False)
    b.reset_peak()
    res = run_unet(args, model)
    b.figure("floor: UNet fwd+bwd steps/s", 1 / res["s_per_step"], "steps/s",
             f"the UNet (with the rank-4 LoRA) alone, {px} px, batch 1, {args.mixed_precision}")
    b.figure("floor: peak memory", b.peak_mib(), b.memory_unit)
    ours = b.figures.get((f"train_{family}", "steps/s"))
    if ours:
        b.figure("trainer step time / floor", (1 / ours) / res["s_per_step"], "x",
                 "1.00 = a trainer step costs only its UNet forward+backward")


def _style_dir(b: Bench, family: str) -> Path:
    """A user's style folder: one style (its own random LoRA) for ``family``'s model."""
    from facechain.testing import random_lora

    def make() -> Path:
        folder = b.work / f"styles-{family}"
        random_lora(b.model(family), folder, seed=2, weight_name="bench_style.safetensors", family=family)
        (folder / "bench.json").write_text(json.dumps({
            "name": "Bench", "img": "", "model_id": "bench_style.safetensors", "revision": None, "bin_file": None,
            "multiplier_style": 0.35, "multiplier_human": 0.95, "add_prompt_style": "oil painting, upper body"}))
        return folder
    return b.asset(f"style-{family}", make)


def _lora(b: Bench, name: str, family: str, seed: int) -> Path:
    from facechain.testing import random_lora

    return b.asset(f"{name}-{family}", lambda: random_lora(b.model(family), b.work / f"{name}-{family}", seed, family=family))


def _run_config(b: Bench, settings: dict, name: str) -> tuple[dict, float]:
    """run_inference.py's config path: a YAML config, ``load_generate_config`` + ``run_job``, in this
    process. (manifest, wall seconds)."""
    import yaml

    from facechain.generate import load_generate_config, run_job

    out = b.work / f"out-{name}-{time.time_ns()}"
    path = b.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "device": b.device, "face_backend": "dlib",
                                    "fusion": "landmark", **settings}))
    b.reset_peak()
    t0 = time.perf_counter()
    run_job(load_generate_config(path))
    wall = time.perf_counter() - t0
    return json.loads((out / "manifest.json").read_text()), wall


def _plain_seconds(b: Bench, model: Path, fast: bool, steps: int, guidance: float, n: int, px: int) -> float:
    """The floor: one plain diffusers pipeline call for ``n`` images (same scheduler, steps, guidance,
    size and dtype as ours; no LoRA, no prompt weighting, no post-processing), after a warm-up call."""
    import torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, LCMScheduler

    from facechain.models import resolve_dtype

    pipe = DiffusionPipeline.from_pretrained(str(model), torch_dtype=resolve_dtype("auto", b.device)).to(b.device)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = (LCMScheduler.from_config(pipe.scheduler.config) if fast else DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2))
    call = {"prompt": "a person, upper body", "negative_prompt": "low quality", "num_images_per_prompt": n, "height": px, "width": px,
                "guidance_scale": guidance}
    with torch.inference_mode():
        pipe(**call, num_inference_steps=2)  # warm-up: kernels, allocator
        b.reset_peak()
        t0 = time.perf_counter()
        pipe(**call, num_inference_steps=steps, generator=[torch.Generator(b.device).manual_seed(i) for i in range(n)])
        if b.cuda:
            torch.cuda.synchronize()
    del pipe
    return time.perf_counter() - t0


def _generate(b: Bench, fast: bool) -> None:
    p = b.profile
    model = b.model("sd15")
    steps, guidance = (p.fast_steps, 1.5) if fast else (p.steps, 7.0)  # GenerateConfig's guidance defaults
    floor = _plain_seconds(b, model, fast, steps, guidance, p.candidates, p.sd15_px)  # first: it warms this process up
    what = f"{p.candidates} candidates x {steps} steps at {p.sd15_px} px" + (" (LCM)" if fast else " (DPM-Solver++)")
    b.figure("floor: plain pipeline call", floor, "s", f"{what}, diffusers alone")
    settings = {"base_model": str(model), "lora_dir": str(_lora(b, "face", "sd15", 1)), "processed_dir": str(_processed(b)),
                "styles": ["Bench"], "style_dirs": [str(_style_dir(b, "sd15"))], "num_candidates": p.candidates,
                "num_images": min(3, p.candidates), "batch_size": p.candidates, "num_inference_steps": p.steps,
                "fast": fast, "fast_num_inference_steps": p.fast_steps}
    if fast:
        settings["lcm_lora"] = str(_lora(b, "lcm", "sd15", 3))
    manifest, wall = _run_config(b, settings, "fast" if fast else "generate")
    style = manifest["styles"][0]
    sampling = style["timings"]["generate_s"]
    enc = style["settings"].get("prompt_encoding", {})
    b.figure("sampling (PortraitGenerator)", sampling, "s", f"{what}, face + style LoRA fused, batch {p.candidates}; "
             f"prompt {enc.get('prompt_tokens')} tokens, negative {enc.get('negative_prompt_tokens')} tokens")
    b.figure("sampling / floor", sampling / floor, "x", "prompt weighting (no 77-token cut), LoRA fuse/unfuse")
    b.figure("post-processing", style["timings"]["postprocess_s"], "s",
             "landmark fusion + dlib ranking; random weights draw no faces, so detection only")
    b.figure("model loading", manifest["timings"]["load_s"], "s", "pipeline + LoRAs, page cache warm")
    b.figure("run_inference config path, end to end", wall, "s", "load_generate_config + run_job: loading, sampling, "
             "post-processing, outputs written")
    b.figure("peak memory", b.peak_mib(), b.memory_unit, "the config-path job")


def postprocess(b: Bench) -> None:
    from infer_bench import postprocess_bench

    n = b.profile.postprocess_photos
    res = postprocess_bench(n)
    b.figure(f"fusion + ranking of {n} real photos", res["seconds"], "s", f"{res['usable']} usable faces; CPU, dlib")
    sampling = b.figures.get(("generate_sd15", "sampling (PortraitGenerator)"))
    if sampling is not None and n == b.profile.candidates:
        b.figure("end to end with real faces (estimate)", sampling + res["seconds"], "s",
                 "generate_sd15's sampling + this post-processing")


def _controlnet(b: Bench, family: str) -> Path:
    """An OpenPose-shaped ControlNet of the model (diffusers' ``ControlNetModel.from_unet``, the published
    SD1.5/SDXL ControlNets' architecture), random weights, float16 on a GPU."""
    def make() -> Path:
        import torch
        from diffusers import ControlNetModel, UNet2DConditionModel

        dtype = torch.float16 if b.cuda else torch.float32
        unet = UNet2DConditionModel.from_pretrained(str(b.model(family)), subfolder="unet", torch_dtype=dtype)
        folder = b.work / f"controlnet-{family}"
        ControlNetModel.from_unet(unet).to(dtype).save_pretrained(str(folder))
        return folder
    return b.asset(f"controlnet-{family}", make)


def template_sd15(b: Bench) -> None:
    from facechain import samples
    from facechain.face import get_analyzer
    from facechain.io import save_image
    from facechain.template import PersonSpec, TemplateConfig, run_template

    model = b.model("sd15")
    template = save_image(b.work / "template.png", samples.astronaut())  # one face
    cn = _controlnet(b, "sd15")
    analyzer = get_analyzer("dlib")
    for run in ("first run", "second run"):
        cfg = TemplateConfig(template=template, output_dir=b.work / f"template-{time.time_ns()}", base_model=str(model),
                             people=[PersonSpec(lora_dir=_lora(b, "face", "sd15", 1), processed_dir=_processed(b))],
                             num_inference_steps=b.profile.template_steps, controlnet_openpose=str(cn),
                             controlnet_canny=str(cn), face_backend="dlib", fusion="landmark", device=b.device)
        b.reset_peak()
        t0 = time.perf_counter()
        result = run_template(cfg, analyzer=analyzer)
        if result.failures:
            raise RuntimeError(f"run_template failed: {result.failures}")
        b.figure(f"one face, {run}", time.perf_counter() - t0, "s", "run_template: model + ControlNets loaded, "
                 "inpaint, colour, fusion, paste" + (" (cold)" if run == "first run" else " (warm process)"))
    b.figure("peak memory", b.peak_mib(), b.memory_unit, "second run")


def stylize_sd15(b: Bench) -> None:
    from skimage import data

    from facechain.stylize import StylizeConfig, build_engine, stylize

    cfg = StylizeConfig(base_model=str(b.model("sd15")), resolution=b.profile.sd15_px,
                        num_inference_steps=b.profile.stylize_steps, device=b.device)
    t0 = time.perf_counter()
    engine = build_engine(cfg)
    b.figure("engine load", time.perf_counter() - t0, "s", f"dtype {cfg.dtype} (StylizeConfig's default)")
    b.reset_peak()
    for which, style in (("first stylization", data.chelsea()), ("second (content inversion cached)", data.coffee())):
        t0 = time.perf_counter()
        res = stylize(data.astronaut(), style, cfg, engine=engine, progress=False)
        b.figure(which, time.perf_counter() - t0, "s", f"{res.stats['unet_passes']} UNet passes, {cfg.method}, "
                 f"{b.profile.stylize_steps} steps")
    b.figure("peak memory", b.peak_mib(), b.memory_unit)


def sdxl_controlnet_ip(b: Bench) -> None:
    from facechain.testing import build_tiny_faceid_adapter

    p = b.profile
    model = b.model("sdxl")
    # IP-Adapter-FaceID in the published layout, its layers sized from this UNet (2048-d cross-attention);
    # it reads dlib's 128-d embedding (the published one ArcFace's 512-d: a few kFLOPs apart)
    faceid = b.asset("faceid-sdxl", lambda: build_tiny_faceid_adapter(model, b.work / "faceid-sdxl.safetensors", seed=3))
    processed = _processed(b)
    settings = {"base_model": str(model), "processed_dir": str(processed), "styles": ["Bench"],
                "style_dirs": [str(_style_dir(b, "sdxl"))], "num_candidates": p.sdxl_candidates, "num_images": 1,
                "batch_size": p.sdxl_candidates, "num_inference_steps": p.sdxl_steps, "height": p.sdxl_px,
                "width": p.sdxl_px, "pose": "upper_body_front", "pose_control": "controlnet",
                "controlnet_openpose": str(_controlnet(b, "sdxl")),
                "identity": {"adapter": "ip-adapter-faceid", "photos": str(processed), "weights": str(faceid)}}
    manifest, wall = _run_config(b, settings, "sdxl-cn-ip")
    style = manifest["styles"][0]
    b.figure("peak memory", b.peak_mib(), b.memory_unit, f"batch {p.sdxl_candidates} x {p.sdxl_steps} steps at "
             f"{p.sdxl_px} px, guidance 7 (CFG doubles the batch), style LoRA + IP-Adapter LoRA fused")
    b.figure("sampling", style["timings"]["generate_s"], "s", f"{p.sdxl_candidates} candidates x {p.sdxl_steps} steps")
    b.figure("model loading", manifest["timings"]["load_s"], "s", "pipeline, ControlNet, adapter")
    b.figure("config path, end to end", wall, "s", "first SDXL job in this process")


# --------------------------------------------------------------------------- the parts, in the order they run
# SD1.5's parts first (cheaper: most figures survive a short budget), then SDXL's. Estimates: seconds on an
# H100/H200, rough guesses made before any GPU run (assumed: SD1.5 at 512 px ~12 ms per UNet evaluation in
# float16, SDXL at 1024 px ~3x that, disk ~1 GB/s); correct them from the first run's part rows.
# --smoke's: measured on the 2-core CPU this was written on, while others shared it.

def _model_parts(family: str, label: str, px: int, build: tuple, train: tuple, floor: tuple) -> list[Part]:
    """A family's build, trainer and trainer-floor parts; each cost is (full, --smoke) seconds."""
    return [Part(f"build_{family}", partial(_build, family=family), *build,
                 f"{label} full architecture from its published configs, random weights, saved as a float16 diffusers folder"),
            Part(f"train_{family}", partial(_train, family=family), *train,
                 f"sh train_lora.sh on {label} at {px} px, bf16: steps/s, peak memory, wall time"),
            Part(f"train_{family}_floor", partial(_floor, family=family), *floor,
                 f"{label} UNet forward+backward alone at {px} px, bf16 (the trainer's floor), and the ratio")]


PARTS: list[Part] = [
    *_model_parts("sd15", "SD1.5", FULL.sd15_px, build=(20, 5), train=(45, 60), floor=(15, 8)),
    Part("generate_sd15", partial(_generate, fast=False), 35, 20,
         "SD1.5 10 candidates x 40 steps at 512 px through run_inference's config path, a plain pipeline call's floor, "
         "peak memory"),
    Part("generate_sd15_fast", partial(_generate, fast=True), 20, 20,
         "the same in fast mode (LCM-LoRA + LCMScheduler, 6 steps)"),
    Part("postprocess", postprocess, 10, 10, "landmark fusion + dlib ranking of 10 real 512 px portraits (CPU)"),
    Part("template_sd15", template_sd15, 25, 25,
         "a template face: run_template on SD1.5 with openpose + canny ControlNets, 40 steps x strength 0.65, landmark "
         "fusion, twice"),
    Part("stylize_sd15", stylize_sd15, 35, 15,
         "Portrait Diffusion on SD1.5 at 512 px, 50 steps: a first and a second (inversion cached) stylization"),
    *_model_parts("sdxl", "SDXL", FULL.sdxl_px, build=(30, 8), train=(60, 70), floor=(20, 10)),
    Part("sdxl_controlnet_ip", sdxl_controlnet_ip, 60, 30,
         "SDXL + OpenPose ControlNet + IP-Adapter-FaceID at 1024 px, one batch of 5 x 20 steps through the config "
         "path: peak memory, seconds"),
]


# --------------------------------------------------------------------------- the driver


def machine_row(profile: Profile, device: str, budget: float) -> dict:
    import diffusers
    import torch
    import transformers

    row = {"kind": "machine", "profile": profile.name, "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__, "cpus": os.cpu_count(), "budget_s": budget, "device": device}
    with contextlib.suppress(ImportError):
        import peft

        row["peft"] = peft.__version__
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        row.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, driver=_driver_version())
    else:
        row["gpu"] = None
    return row


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no nvidia-smi)"


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_parts(b: Bench, parts: list[Part], budget: float) -> list[dict]:
    """Each part in order, under its own time limit, never past ``budget`` seconds in all. One ``part``
    row each (ok, error, timeout or skipped, with the reason), written as it finishes."""
    rows = []
    for p in parts:
        elapsed = time.perf_counter() - b.started
        left = budget - elapsed
        row = {"kind": "part", "part": p.name, "estimate_s": p.cost(b.profile)}
        if p.cost(b.profile) > left:
            row.update(status="skipped", seconds=0.0,
                       error=f"budget: {elapsed:.0f} s used of --budget-s {budget:.0f}, this part is estimated at "
                             f"{p.cost(b.profile):.0f} s; rerun it with --only {p.name}")
        else:
            limit = min(p.limit(b.profile), left)
            print(f"[{elapsed:6.1f} s] {p.name} (estimate {p.cost(b.profile):.0f} s, limit {limit:.0f} s): {p.what}",
                  flush=True)
            b.part, b.deadline = p.name, time.perf_counter() + limit
            t0 = time.perf_counter()
            try:
                with time_limit(limit):
                    b.reset_peak()
                    p.fn(b)
                row["status"] = "ok"
            except Skip as exc:
                row.update(status="skipped", error=str(exc))
            except PartTimeout as exc:
                row.update(status="timeout", error=str(exc))
            except (Exception, SystemExit) as exc:  # noqa: BLE001  (a part's failure is its row; the others still run)
                row.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                           traceback=traceback.format_exc()[-3000:])
            row["seconds"] = round(time.perf_counter() - t0, 2)
            with contextlib.suppress(Exception):  # a broken CUDA context must not end the run here
                row["peak_mib"] = round(b.peak_mib(), 1)
                _free_memory()
        print(f"  {p.name}: {row['status']}" + (f" ({_first_line(row.get('error'))})" if row.get("error") else ""), flush=True)
        b.write(row)
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- RESULTS.md


def read_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # a killed run can leave half a last line
                print(f"{path}:{n}: skipped an unreadable line ({exc.msg})", file=sys.stderr)
    return rows


def _first_line(text: str | None, limit: int = 300) -> str:
    return ((text or "").strip().splitlines() or [""])[0][:limit]


def split_runs(rows: list[dict]) -> list[list[dict]]:
    """The rows of each run in a results file (a run begins with its ``machine`` row)."""
    runs: list[list[dict]] = []
    for r in rows:
        if r.get("kind") == "machine":
            runs.append([])
        if not runs:
            raise SystemExit("these results do not begin with a machine row: they were not written by benchmarks/gpu.py")
        runs[-1].append(r)
    if not runs:
        raise SystemExit("no rows in these results")
    return runs


def render_run(rows: list[dict]) -> str:
    """One run's machine line, figures table and the parts that did not finish."""
    m = rows[0]
    gpu = (f"{m['gpu']} ({m.get('gpu_memory_gib')} GiB), driver {m.get('driver')}, CUDA {m.get('cuda')}" if m.get("gpu")
           else "no GPU (CPU only)")
    lines = [f"**Run of {m['date']}** (profile `{m['profile']}`, budget {m['budget_s']:.0f} s). Machine: {gpu}, "
             f"{m.get('cpus')} CPUs; Python {m['python']}, torch {m['torch']}, diffusers {m['diffusers']}, transformers "
             f"{m['transformers']}" + (f", peft {m['peft']}" if m.get("peft") else "") + "."]
    for r in rows:
        if r.get("kind") == "model":
            lines.append(f"{r['family']}: configs from {r['configs']}; tokenizer: {r['tokenizer']}.")
    lines += ["", "| part | figure | value | unit | note |", "|---|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['figure']} | {r['value']:.4g} | {r['unit']} | {r.get('note', '')} |"
              for r in rows if r.get("kind") == "figure"]
    parts = [r for r in rows if r.get("kind") == "part"]
    lines += ["", f"Parts: {sum(r['status'] == 'ok' for r in parts)} of {len(parts)} ok, "
                  f"{sum(r.get('seconds', 0) for r in parts):.0f} s in all."]
    lines += [f"- **{r['part']}: {r['status']}** ({_first_line(r.get('error'))})" for r in parts if r["status"] != "ok"]
    return "\n".join(lines)


def render_section(rows: list[dict]) -> str:
    """The "GPU figures" section's body: every run in ``rows``, oldest first."""
    return "\n\n".join(render_run(run) for run in split_runs(rows))


def write_results_md(rows: list[dict], md: Path) -> None:
    """Replace the body between the section's markers in ``md`` with ``rows``' figures (a missing ``md`` is
    made with the markers alone, e.g. ``--results-md $OUT/RESULTS.md`` on a machine whose files come back)."""
    if not md.exists():
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(f"{BEGIN}\n{END}\n")
    text = md.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{md} has no '{BEGIN}' ... '{END}' markers: add the 'GPU figures' section first")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    md.write_text(f"{head}{BEGIN}\n{render_section(rows)}\n{END}{tail}")


# --------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu_results.jsonl"), help="JSON-lines file the rows are appended to")
    p.add_argument("--budget-s", type=float, default=None, help="seconds for the whole run; parts that no longer fit "
                   f"are skipped (default {FULL.budget_s:.0f}; --smoke: {SMOKE.budget_s:.0f})")
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: checks the script, measures nothing")
    p.add_argument("--only", default="", help="comma-separated part names to run (their build parts are added)")
    p.add_argument("--list", action="store_true", help="print the parts and their estimated cost, and exit")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the models and outputs (default: a temporary "
                   "folder, removed at the end)")
    p.add_argument("--write-results", type=Path, metavar="FILE.jsonl", default=None,
                   help="write a saved run's rows into RESULTS.md's GPU figures section, and exit")
    p.add_argument("--results-md", type=Path, default=None, help=f"the markdown file to update (default {RESULTS_MD.relative_to(ROOT)}; "
                   "a --smoke run writes none unless given)")
    args = p.parse_args(argv)
    profile = SMOKE if args.smoke else FULL
    if args.list:
        print(f"{'part':<22}{'estimate (H100/H200)':>22}{'--smoke (2-core CPU)':>22}  what")
        for part_ in PARTS:
            print(f"{part_.name:<22}{part_.cost_s:>20.0f} s{part_.smoke_cost_s:>20.0f} s  {part_.what}")
        print(f"{'total':<22}{sum(x.cost_s for x in PARTS):>20.0f} s{sum(x.smoke_cost_s for x in PARTS):>20.0f} s"
              f"  (default budget {FULL.budget_s:.0f} s)")
        return 0
    if args.write_results is not None:
        rows = read_rows(args.write_results)
        md = args.results_md or RESULTS_MD
        if md.resolve() == RESULTS_MD.resolve() and any(r.get("profile") == "smoke" for r in rows if r.get("kind") == "machine"):
            raise SystemExit(f"{args.write_results} holds --smoke rows (tiny models on a CPU), not GPU figures; they are not "
                             f"written into {RESULTS_MD.name}. Pass --results-md OTHER.md to render them elsewhere.")
        write_results_md(rows, md)
        print(f"wrote {sum(r.get('kind') == 'figure' for r in rows)} figures into {md}")
        return 0

    import torch

    if profile.name == "full" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: the full run measures GPU figures. On a CPU, --smoke checks the script on tiny models.")
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    unknown = names - {x.name for x in PARTS}
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; the parts are {[x.name for x in PARTS]}")
    if names:  # a part on a family's model needs that model built first
        names |= {f"build_{fam}" for fam in ("sd15", "sdxl") if any(fam in n for n in names)}
    parts = [x for x in PARTS if not names or x.name in names]
    budget = args.budget_s if args.budget_s is not None else profile.budget_s
    device = "cuda" if profile.name == "full" else "cpu"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    b = Bench(profile, work, args.out.resolve(), device)
    b.write(machine_row(profile, device, budget))
    print(f"benchmarks/gpu.py: profile {profile.name}, device {device}, budget {budget:.0f} s, rows -> {args.out}", flush=True)
    try:
        rows = run_parts(b, parts, budget)
    finally:
        if args.workdir is None:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - b.started:.0f} s: {sum(r['status'] == 'ok' for r in rows)} of {len(rows)} parts ok",
          flush=True)
    if args.results_md is not None or profile.name == "full":
        md = args.results_md or RESULTS_MD
        write_results_md(read_rows(args.out), md)
        print(f"wrote the figures into {md}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
