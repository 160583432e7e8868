"""What the UNet families (SD1.5, SDXL) share: a ``unet`` denoiser conditioned on CLIP text encoders'
hidden states, a KL VAE, epsilon-prediction DDPM schedulers, and the diffusers pipeline layout."""

from __future__ import annotations

import numpy as np

from facechain.errors import InputError
from facechain.families.base import Family


class UNetFamily(Family):
    denoiser = "unet"
    supports_inversion = True  # DDIM inversion of an epsilon-prediction UNet (stylize, DIIR)

    def text_encoder_pairs(self, pipe) -> list[tuple]:
        pairs = [(getattr(pipe, "tokenizer" + name[len("text_encoder"):], None), getattr(pipe, name, None))
                 for name in self.text_encoders]
        return [(t, e) for t, e in pairs if e is not None]

    def native_size_of(self, pipe) -> int:
        """A loaded pipeline's native image side: UNet sample size x VAE scale factor."""
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)

    # ---------------------------------------------------------------- sampling
    def scheduler(self, config, fast: bool = False):
        """The scheduler facechain samples this family with, built from a pipeline's scheduler config:
        the fast mode's (LCMScheduler) or the family default (DPM-Solver++ 2M: Lu et al. 2022, Alg. 2)."""
        import diffusers

        if fast:
            return getattr(diffusers, self.fast.scheduler).from_config(config)
        return getattr(diffusers, self.sampling.scheduler).from_config(config, **self.sampling.scheduler_kwargs)

    # ---------------------------------------------------------------- training
    def objective(self, scheduler_config) -> "DDPMObjective":
        """The training objective of the pipeline's scheduler config: DDPM noising, an epsilon or
        v-prediction target (the scheduler's ``prediction_type``)."""
        return DDPMObjective(scheduler_config)

    # ---------------------------------------------------------------- latents
    def encode_latents(self, vae, image: np.ndarray, device=None):
        """VAE latents (the posterior mean, scaled) of one RGB uint8 image, (1, C, h, w) in the VAE's
        dtype. fp16-safe: a float16 VAE whose config sets ``force_upcast`` runs in float32 for the call."""
        import torch

        x = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)
        with torch.no_grad(), _upcast(vae):
            return vae.encode(x.to(device or vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor

    def decode_latents(self, vae, latents) -> np.ndarray:
        """One RGB uint8 image (H, W, 3) of ``latents`` (1, C, h, w); fp16-safe as :meth:`encode_latents`."""
        import torch

        with torch.no_grad(), _upcast(vae):
            x = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        x = (x[0].float().clamp(-1, 1) + 1) * 127.5
        return x.permute(1, 2, 0).round().to(torch.uint8).cpu().numpy()


class _upcast:
    """Run a float16 VAE whose config sets ``force_upcast`` in float32 inside the block."""

    def __init__(self, vae):
        import torch

        self.vae = vae
        self.on = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)

    def __enter__(self):
        if self.on:
            import torch

            self.vae.to(torch.float32)

    def __exit__(self, *exc):
        if self.on:
            import torch

            self.vae.to(torch.float16)
        return False


class DDPMObjective:
    """DDPM training (Ho et al. 2020): uniform integer timesteps, ``add_noise``, and the target the model
    predicts: the noise (epsilon) or the velocity (v-prediction, Salimans & Ho 2022)."""

    def __init__(self, scheduler_config):
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(scheduler_config)
        self.prediction_type = self.scheduler.config.prediction_type
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise InputError(f"the base model's scheduler predicts {self.prediction_type!r}; training supports epsilon "
                             "and v_prediction models.")

    def noised(self, x0, generator, device):
        """(noisy latents, timesteps, target) for clean latents ``x0`` (B, C, h, w) on ``device``. Draws the noise,
        then the timesteps, from ``generator`` (a CPU generator: the same numbers on every device)."""
        import torch

        noise = torch.randn(x0.shape, generator=generator).to(device)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],),
                                  generator=generator).to(device)
        target = noise if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, noise, timesteps)
        return self.scheduler.add_noise(x0, noise, timesteps), timesteps, target
