"""Deterministic DDIM / LCM steps and their exact inverses, shared by every inversion in facechain
(stylize's trajectories, DIIR's partial inversion): the latent trajectory z_0 .. z_T of an image, with
the *same* scheduler and timesteps the sampling pass uses.

Two schedules share one interface (:class:`Schedule`):

* ``ddim``: DDIM (Song et al. 2021, Eq. 12 with eta = 0), inverted step by step as in
  Mokady et al. 2023 ("Null-text inversion", Sec. 3) and MasaCtrl's ``invert``. The step between
  two timesteps reads both alphas from the timestep list, so any spacing works.
* ``lcm``: the LCM multistep sampler (Luo et al. 2023, Algorithm 3) made deterministic: the
  fresh noise it adds between steps is replaced by the model's own eps (the DDIM choice), which
  makes every step invertible in closed form. LCM's own timesteps (e.g. 999, 759, 499, 259 for
  4 steps) and boundary-condition scalings c_skip, c_out are used in both directions; this fixes
  Portrait Diffusion's LCM path, which sampled with DDIM and inverted assuming uniform spacing.

Inversion evaluates eps at the current (less noisy) latent with the next timestep, the
standard approximation eps(z_{t_i}, t_{i+1}) ~ eps(z_{t_{i+1}}, t_{i+1}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from tqdm.auto import tqdm

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class Schedule:
    """Timesteps (sampling order, noisiest first) and the alphas each step moves between."""

    kind: Literal["ddim", "lcm"]
    timesteps: tuple[int, ...]
    alphas: tuple[float, ...]  # alpha_bar at timesteps[i]
    alphas_prev: tuple[float, ...]  # alpha_bar at timesteps[i + 1] (or the final alpha)
    c_skip: tuple[float, ...] = ()
    c_out: tuple[float, ...] = ()

    def __len__(self) -> int:
        return len(self.timesteps)

    def _denoised(self, eps, i, x):
        a = self.alphas[i]
        x0 = (x - (1 - a) ** 0.5 * eps) / a**0.5
        if self.kind == "lcm":
            return self.c_skip[i] * x + self.c_out[i] * x0
        return x0

    def step(self, eps: torch.Tensor, i: int, x: torch.Tensor, eps_direction: torch.Tensor | None = None) -> torch.Tensor:
        """x at timesteps[i] -> x at the next (less noisy) timestep.

        ``eps_direction`` (default ``eps``) is the noise used for the direction term; DiffStyle
        predicts x0 with injected features and keeps the direction of the original ones."""
        ap = self.alphas_prev[i]
        direction = eps if eps_direction is None else eps_direction
        return ap**0.5 * self._denoised(eps, i, x) + (1 - ap) ** 0.5 * direction

    def invert_step(self, eps: torch.Tensor, i: int, x_prev: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`step` for a given eps: x at timesteps[i] from x at the next one."""
        a, ap = self.alphas[i], self.alphas_prev[i]
        if self.kind == "lcm":
            # x_prev = sqrt(ap) (A x - B eps) + sqrt(1-ap) eps, with denoised = A x - B eps
            big_a = self.c_skip[i] + self.c_out[i] / a**0.5
            big_b = self.c_out[i] * (1 - a) ** 0.5 / a**0.5
            return (x_prev - (1 - ap) ** 0.5 * eps + ap**0.5 * big_b * eps) / (ap**0.5 * big_a)
        x0 = (x_prev - (1 - ap) ** 0.5 * eps) / ap**0.5
        return a**0.5 * x0 + (1 - a) ** 0.5 * eps

    def signature(self) -> dict:
        return {"kind": self.kind, "timesteps": list(self.timesteps)}


def make_schedule(scheduler_config: dict, steps: int, kind: Literal["ddim", "lcm"]) -> Schedule:
    """Build a schedule from a pipeline's scheduler config (betas, spacing, offset)."""
    from diffusers import DDIMScheduler, LCMScheduler

    if kind == "ddim":
        sched = DDIMScheduler.from_config(scheduler_config)
        sched.set_timesteps(steps)
        ts = [int(t) for t in sched.timesteps]
        ac = sched.alphas_cumprod
        final = float(sched.final_alpha_cumprod)
        alphas = tuple(float(ac[t]) for t in ts)
        prev = tuple(float(ac[t]) for t in ts[1:]) + (final,)
        return Schedule("ddim", tuple(ts), alphas, prev)
    if kind == "lcm":
        sched = LCMScheduler.from_config(scheduler_config)
        sched.set_timesteps(steps)
        ts = [int(t) for t in sched.timesteps]
        ac = sched.alphas_cumprod
        alphas = tuple(float(ac[t]) for t in ts)
        # LCM's last step returns the denoised sample itself, i.e. alpha_prev = 1.
        prev = tuple(float(ac[t]) for t in ts[1:]) + (1.0,)
        scal = [sched.get_scalings_for_boundary_condition_discrete(t) for t in ts]
        return Schedule("lcm", tuple(ts), alphas, prev, tuple(float(s[0]) for s in scal), tuple(float(s[1]) for s in scal))
    raise ValueError(f"schedule kind must be 'ddim' or 'lcm', got {kind!r}")


@dataclass(frozen=True)
class Trajectory:
    """Latents of one inverted image: ``latents[k]`` is at noise level ``timesteps[N - k]``
    (``latents[0]`` the clean latent, ``latents[N]`` = z_T at ``timesteps[0]``)."""

    latents: torch.Tensor  # (N + 1, C, h, w)
    timesteps: tuple[int, ...]

    @property
    def z_T(self) -> torch.Tensor:
        return self.latents[-1]

    def at_step(self, i: int) -> torch.Tensor:
        """The latent the sampling pass holds at the start of step i."""
        return self.latents[len(self.timesteps) - i]

    def after_step(self, i: int) -> torch.Tensor:
        """The latent after sampling step i."""
        return self.latents[len(self.timesteps) - i - 1]


@torch.no_grad()
def invert(eps_fn: EpsFn, z0: torch.Tensor, schedule: Schedule, progress: bool = True, refine: int = 0) -> Trajectory:
    """Invert clean latent ``z0`` (C, h, w) to z_T with ``eps_fn(x (1,C,h,w), t) -> eps``.

    ``refine`` > 0 adds fixed-point iterations per step (Pan et al. 2023, "Effective Real Image
    Editing with Accelerated Iterative Diffusion Inversion", Sec. 3): x_{i} is solved so that
    the *sampling* step from it, with eps evaluated at x_{i} itself, lands on x_{i+1}; each
    iteration costs one more UNet pass and brings reconstruction closer to exact."""
    x = z0[None]
    out = [z0]
    n = len(schedule)
    for i in tqdm(range(n - 1, -1, -1), desc="invert", disable=not progress, leave=False):
        t = schedule.timesteps[i]
        x_next = schedule.invert_step(eps_fn(x, t), i, x)
        for _ in range(refine):
            x_next = schedule.invert_step(eps_fn(x_next, t), i, x)
        x = x_next
        out.append(x[0])
    return Trajectory(torch.stack(out), schedule.timesteps)
