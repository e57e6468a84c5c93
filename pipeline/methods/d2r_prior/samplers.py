"""Reverse-time samplers of the IR-SDE prior (D2R Stage II), with reproducible, caller-seeded noise.

Three samplers, all for a noise-predicting network ``net(x_t, mu, t) -> noise`` (t a LongTensor (B,)):

``"reference"``  Euler-Maruyama over every step from x_{t0} = mu + std_{t0} noise (t0 = T by default) down to
                 x_0: x_{t-1} = x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt + sigma_t sqrt(dt) noise, score
                 = -net / std_t.  This is IR-SDE's / D2R's published sampler (T = 100 network calls) and the one
                 Stage I's loss trains for.  Even with an oracle net its result carries the noise of the last
                 Euler step, sigma_1 sqrt(dt) ~ std_1 (0.0037 RMSE for the defaults, measured).
``"posterior"``  the same steps, but each step first estimates x0_hat = predict_x0(x_t, net) and then draws
                 x_{t-1} from the exact one-step OU-bridge posterior q(x_{t-1} | x_t, x0_hat).  At t = 1 the
                 posterior is a point mass on x0_hat.  T network calls.
``"fast"``       the posterior step generalised to jumps t_i -> t_{i+1} over a short decreasing subsequence
                 (``fast_timesteps``: t_start, ..., evenly spaced, ``steps`` <= 10 entries, default 5 from
                 t_start = T // 2 -- a truncated start at mu + std_{t_start} noise).  This is the stochastic
                 (DDPM-posterior / DDIM eta = 1) analogue for this SDE, not MaRS's exponential integrator.  The
                 last estimate x0_hat is returned without noise.  ``steps`` network calls.

With an oracle network (one that knows x0) "posterior" and "fast" return x0 exactly (float error only) and
the reference sampler returns it up to its last-step noise.  An oracle is not a trained net: how much quality
the few-step sampler keeps on a real prior has to be measured.

Noise.  A ``NoiseFn`` maps (step index, shape) to standard normal noise; ``seeded_noise`` makes one that is a
pure function of (seed, step, shape), so reruns and retries reproduce a result bit for bit.  The noise that
produces state x_s is drawn with key s: the start state with key t0, the step t -> t - 1 with key t - 1.
``per_sample_noise`` gives each batch element its own seed, so a slice's result does not depend on which
other slices share its batch.

Range.  Data live in [0, 1].  With ``clip=True`` (default) every x0 estimate of "posterior"/"fast" is clamped
to [0, 1] before it is used (a bad noise prediction at large t is amplified by 1/exp(-thetabar_t), up to 200x),
and every sampler clamps its output to [0, 1].  Intermediate states x_t are never clamped (they legitimately
leave [0, 1] by the added noise).  ``clip=False`` returns the raw result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .irsde import IRSDE, NoiseNet

NoiseFn = Callable[[int, tuple[int, ...]], Tensor]

SAMPLERS = ("reference", "posterior", "fast")
MAX_FAST_STEPS = 10
DEFAULT_FAST_STEPS = 5


def _stream_seed(seed: int, step: int) -> int:
    """A 63-bit generator seed that depends only on (seed, step) -- stable across runs, machines and Pythons."""
    digest = hashlib.blake2b(f"isovol-noise:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def seeded_noise(seed: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> NoiseFn:
    """Deterministic standard normal noise: the same (seed, step, shape) always gives the same tensor.

    Each call seeds a fresh CPU ``torch.Generator`` from a hash of (seed, step), draws float32 on the CPU and
    moves the result to ``device``/``dtype``: the values are therefore the same on every device (a CUDA
    generator would give a different stream).  ``seed`` may be any integer (e.g. derived from global slice
    coordinates).
    """

    def noise(step: int, shape: tuple[int, ...]) -> Tensor:
        gen = torch.Generator().manual_seed(_stream_seed(seed, step))
        out = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
        return out.to(device=device, dtype=dtype)

    return noise


def per_sample_noise(seeds: Sequence[int], device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> NoiseFn:
    """Noise for a batch whose element i uses its own seed ``seeds[i]`` (shape[0] must equal len(seeds)).

    Element i equals ``seeded_noise(seeds[i])(step, shape[1:])``: a slice's noise, hence its sample, does not
    depend on its batch neighbours or its position in the batch.
    """
    fns = [seeded_noise(s) for s in seeds]

    def noise(step: int, shape: tuple[int, ...]) -> Tensor:
        if shape[0] != len(fns):
            raise ValueError(f"per_sample_noise has {len(fns)} seeds but the batch has {shape[0]} elements")
        out = torch.stack([fn(step, tuple(shape[1:])) for fn in fns])
        return out.to(device=device, dtype=dtype)

    return noise


def fast_timesteps(t_start: int, steps: int) -> list[int]:
    """The decreasing timesteps of the fast sampler: round(t_start * (steps - i) / steps), i = 0..steps-1.

    E.g. t_start 50, 5 steps -> [50, 40, 30, 20, 10]; the sampler jumps 50 -> 40 -> ... -> 10 and returns the
    x0 estimate made at 10.  Duplicates (steps > t_start) are refused.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if t_start < steps:
        raise ValueError(f"the fast sampler needs t_start >= steps (got t_start {t_start}, steps {steps})")
    return [max(1, round(t_start * (steps - i) / steps)) for i in range(steps)]


def _resolve(sde: IRSDE, sampler: str, steps: int | None, t_start: int | None,
             timesteps: Sequence[int] | None = None) -> list[int]:
    """The timesteps at which the network is called, in order."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    if sampler == "fast":
        if timesteps is not None:
            ts = [int(t) for t in timesteps]
            if not ts or any(a <= b for a, b in zip(ts, ts[1:])) or ts[-1] < 1 or ts[0] > sde.T:
                raise ValueError(f"timesteps must be strictly decreasing within [1, {sde.T}], got {ts}")
            if steps is not None and steps != len(ts):
                raise ValueError(f"steps ({steps}) disagrees with len(timesteps) ({len(ts)})")
        else:
            steps = DEFAULT_FAST_STEPS if steps is None else int(steps)
            t0 = sde.T // 2 if t_start is None else int(t_start)
            if not 1 <= t0 <= sde.T:
                raise ValueError(f"t_start must be in [1, {sde.T}], got {t0}")
            ts = fast_timesteps(t0, steps)
        if len(ts) > MAX_FAST_STEPS:
            raise ValueError(f"the fast sampler takes at most {MAX_FAST_STEPS} steps, got {len(ts)}; "
                             f"use the posterior sampler for more")
        return ts
    if timesteps is not None:
        raise ValueError("timesteps applies to the fast sampler only")
    t0 = sde.T if t_start is None else int(t_start)
    if not 1 <= t0 <= sde.T:
        raise ValueError(f"t_start must be in [1, {sde.T}], got {t0}")
    if steps is not None and steps != t0:
        raise ValueError(f"the {sampler} sampler takes one step per timestep ({t0}); steps={steps} is not possible")
    return list(range(t0, 0, -1))


def network_calls(sampler: str, steps: int | None = None, T: int = 100, t_start: int | None = None) -> int:
    """Network evaluations per sample: T (or t_start) for "reference" and "posterior", ``steps`` for "fast"."""
    return len(_resolve(IRSDE(T=T), sampler, steps, t_start))


@torch.no_grad()
def sample(sde: IRSDE, net: NoiseNet, mu: Tensor, sampler: str = "fast", steps: int | None = None,
           noise: NoiseFn | None = None, t_start: int | None = None, *, clip: bool = True,
           timesteps: Sequence[int] | None = None) -> Tensor:
    """Restore ``mu`` (B, C, H, W in [0, 1]) with the prior ``net``; see the module docstring for the samplers.

    ``noise`` defaults to ``seeded_noise(0)``.  ``t_start`` truncates the start (default T, or T // 2 for
    "fast"); ``timesteps`` gives the fast sampler an explicit decreasing schedule instead.
    """
    ts = _resolve(sde, sampler, steps, t_start, timesteps)
    noise = seeded_noise(0) if noise is None else noise
    shape = tuple(mu.shape)
    batch = shape[0]

    def draw(step: int) -> Tensor:
        return noise(step, shape).to(mu.device, mu.dtype)

    def tvec(t: int) -> Tensor:
        return torch.full((batch,), t, dtype=torch.long, device=mu.device)

    def answer(x: Tensor, t: int) -> Tensor:
        return net(x, mu, tvec(t)).to(x.dtype)  # autocast nets answer in low precision; the SDE maths is not

    def predict_noise(x: Tensor, t: int) -> Tensor:
        return sde.as_noise(answer(x, t), x, mu, tvec(t))

    def x0_estimate(x: Tensor, t: int) -> Tensor:
        x0 = sde.as_x0(answer(x, t), x, mu, tvec(t))
        return x0.clamp(0, 1) if clip else x0

    x = sde.start(mu, draw(ts[0]), ts[0])
    if sampler == "reference":
        for t in ts:
            score = sde.noise_to_score(predict_noise(x, t), tvec(t))
            x = sde.reverse_sde_step(x, mu, score, tvec(t), draw(t - 1))
    else:  # posterior: ts = t0..1, each jumping to t - 1; fast: jumps along ts, then 0
        targets = [t - 1 for t in ts] if sampler == "posterior" else ts[1:] + [0]
        for t, s in zip(ts, targets):
            x0_hat = x0_estimate(x, t)
            if s == 0:
                x = x0_hat
                break
            mean, std = sde.posterior(x, x0_hat, mu, tvec(t), tvec(s))
            x = mean + std * draw(s)
    return x.clamp(0, 1) if clip else x
