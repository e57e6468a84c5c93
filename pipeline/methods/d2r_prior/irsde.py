"""IR-SDE: the mean-reverting SDE of D2R's Stage I prior (Luo et al. 2023; D2R §3.2, eqs 2-7).

Written in our own words from the papers; the MIT reference implementation was read to pin down the
discretisation (schedule, time scale), nothing was copied.

The process
    dx = theta(t) (mu - x) dt + sigma(t) dW,    sigma(t)^2 = 2 theta(t) lambda^2,    lambda = ``max_sigma``

drives a clean slice x_0 towards the condition mu (the bicubic-upsampled degraded slice) while adding noise
whose stationary standard deviation is lambda.  Its marginal given x_0 is Gaussian:

    x_t ~ N(m_t, v_t),   m_t = mu + (x_0 - mu) exp(-thetabar_t),   v_t = lambda^2 (1 - exp(-2 thetabar_t)).

Discretisation (integer steps t = 0..T; t = 0 is clean data, t = T is "mu + lambda noise")
    cosine schedule   with N = T + 2 and abar(u) = cos^2((u / N + s) / (1 + s) * pi / 2) / cos^2(s / (1 + s) * pi / 2),
                      s = 0.008:  theta_i = 1 - abar(i + 1) for i = 0..T  (an increasing sequence in (0, 1));
    linear schedule   theta_i = linspace(1e-4, 2e-2, T + 1) * 1000 / (T + 1);
    constant          theta_i = 1.
    time scale        the step of the SDE's time variable is ``dt = -ln(eps) / sum_{i=1..T} theta_i``, so that
    cumulative        thetabar_t = dt * sum_{i=1..t} theta_i   (thetabar_0 = 0)  and hence
                      exp(-thetabar_T) = eps exactly: at t = T the weight left on x_0 is eps (0.005 by default)
                      and the std is lambda sqrt(1 - eps^2) ~ lambda.
    sigma_t           sqrt(2 theta_t) lambda; one Euler-Maruyama step adds sigma_t sqrt(dt) N(0, 1).

Treating theta as constant over each step, the one-step transition is exact:
    x_t | x_{t-1} ~ N(mu + a (x_{t-1} - mu), lambda^2 (1 - a^2)),
    a = exp(-theta_t dt) = exp(-(thetabar_t - thetabar_{t-1})),
so the process restricted to the integer grid is a Gaussian Markov chain and every bridge below is exact.

Posterior (OU bridge), for 0 <= s < t, with A = exp(-(thetabar_t - thetabar_s)), S = exp(-thetabar_s),
B = exp(-thetabar_t) = A S:
    q(x_s | x_t, x_0) = N( mu + A (1 - S^2) / (1 - B^2) (x_t - mu) + S (1 - A^2) / (1 - B^2) (x_0 - mu),
                           lambda^2 (1 - A^2) (1 - S^2) / (1 - B^2) ).
For s = t - 1 the mean is the paper's eq (6), ``optimal_prev`` (IR-SDE's "optimum x_{t-1}"); at s = 0 the
mean is x_0 and the variance 0.

Training (eq 5, "maximum likelihood"): the net predicts the noise eps of x_t = m_t + sqrt(v_t) eps; the score is
-eps / sqrt(v_t); the loss is the L1 distance between one reverse Euler step without noise,
x_t - (theta_t (mu - x_t) - sigma_t^2 score) dt, and ``optimal_prev``.  (The paper's gamma_t weights are 1.)

All schedule tables are kept in float64 (float32 where the device has no float64) and coefficients are cast to
the dtype of the image tensors at use, so 1 - exp(-2 thetabar) is accurate at small t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

NoiseNet = Callable[[Tensor, Tensor, Tensor], Tensor]

SCHEDULES = ("cosine", "linear", "constant")


#: what the network predicts: the noise of x_t (the paper) or x0 itself
PREDICTIONS = ("noise", "x0")


def theta_schedule(T: int, schedule: str = "cosine", s: float = 0.008) -> Tensor:
    """theta_0..theta_T (float64, length T + 1) of the named schedule; see the module docstring."""
    if schedule == "cosine":
        n = T + 2
        u = torch.arange(n + 1, dtype=torch.float64)
        abar = torch.cos((u / n + s) / (1 + s) * math.pi / 2) ** 2
        abar = abar / abar[0]
        return 1 - abar[1:-1]
    if schedule == "linear":
        return torch.linspace(1e-4, 2e-2, T + 1, dtype=torch.float64) * (1000 / (T + 1))
    if schedule == "constant":
        return torch.ones(T + 1, dtype=torch.float64)
    raise ValueError(f"unknown IR-SDE schedule {schedule!r}; choose one of {list(SCHEDULES)}")


class IRSDE:
    """Mean-reverting SDE dx = theta_t (mu - x) dt + sigma_t dW, sigma_t^2 = 2 theta_t lambda^2 (lambda = max_sigma).

    Images are (B, C, H, W) in [0, 1]; ``t`` is a LongTensor (B,) of step indices in [1, T] (an int, or a
    tensor of any shape with B elements, is accepted too).  Coefficients come back shaped (B, 1, 1, 1).
    """

    def __init__(self, T: int = 100, max_sigma: float = 50 / 255, eps: float = 0.005, schedule: str = "cosine",
                 prediction: str = "noise"):
        if int(T) != T or T < 1:
            raise ValueError(f"T must be a positive integer, got {T}")
        if not 0 < max_sigma < 1:
            raise ValueError(f"max_sigma is in data units ([0, 1] images), e.g. 50/255; got {max_sigma}")
        if not 0 < eps < 1:
            raise ValueError(f"eps (the weight left on x0 at t = T) must be in (0, 1), got {eps}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.prediction = prediction
        self.T = int(T)
        self.max_sigma = float(max_sigma)
        self.eps = float(eps)
        self.schedule = schedule
        thetas = theta_schedule(self.T, schedule)
        cum = torch.cumsum(thetas, 0) - thetas[0]  # sum_{i=1..t} theta_i
        self.dt = float(-math.log(eps) / cum[-1])
        self.thetas = thetas  # (T + 1,)
        self.thetabar = cum * self.dt  # (T + 1,), thetabar[0] = 0, exp(-thetabar[T]) = eps
        self.sigmas = torch.sqrt(2 * thetas) * self.max_sigma
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------------------------- bookkeeping

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"T": self.T, "max_sigma": self.max_sigma, "eps": self.eps, "schedule": self.schedule}
        if self.prediction != "noise":  # the paper's parametrisation stays implicit: older priors keep their identity
            out["prediction"] = self.prediction
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IRSDE:
        known = {"T", "max_sigma", "eps", "schedule", "prediction"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown IRSDE keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def __repr__(self) -> str:
        return (f"IRSDE(T={self.T}, max_sigma={self.max_sigma:.6g}, eps={self.eps}, schedule={self.schedule!r}, "
                f"dt={self.dt:.6g})")

    def to(self, device: torch.device | str) -> IRSDE:
        """Move the schedule tables (in place; returns self).  float64 unless the device lacks it (MPS)."""
        device = torch.device(device)
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.thetas = self.thetas.to(device, dtype)
        self.thetabar = self.thetabar.to(device, dtype)
        self.sigmas = self.sigmas.to(device, dtype)
        self.device = device
        return self

    def _index(self, t: Tensor | int, batch: int | None = None) -> Tensor:
        """Step indices as a (B,) long tensor on the tables' device, range-checked."""
        idx = torch.as_tensor(t, device=self.thetas.device).reshape(-1).long()
        if batch is not None and idx.numel() == 1 and batch != 1:
            idx = idx.expand(batch)
        # range check only where it costs no device synchronisation
        if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) > self.T):
            raise ValueError(f"step indices must lie in [0, {self.T}], got {idx.min().item()}..{idx.max().item()}")
        return idx

    @staticmethod
    def _shape(coef: Tensor, like: Tensor | None, ndim: int = 4) -> Tensor:
        nd = like.ndim if like is not None else ndim
        out = coef.reshape(-1, *([1] * (nd - 1)))
        if like is not None:
            out = out.to(like.device, like.dtype)
        return out

    def _table(self, table: Tensor, t: Tensor | int, like: Tensor | None) -> Tensor:
        batch = like.shape[0] if like is not None else None
        return self._shape(table[self._index(t, batch)], like)

    # ------------------------------------------------------------------------------- forward process

    def decay(self, t: Tensor | int, like: Tensor | None = None) -> Tensor:
        """exp(-thetabar_t): the weight left on x0 - mu at step t."""
        return torch.exp(-self._table(self.thetabar, t, like))

    def mean(self, x0: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """m_t = mu + (x0 - mu) exp(-thetabar_t)."""
        return mu + (x0 - mu) * self.decay(t, x0)

    def std(self, t: Tensor | int, like: Tensor | None = None) -> Tensor:
        """sqrt(lambda^2 (1 - exp(-2 thetabar_t))), shaped (B, 1, 1, 1) (float32 unless ``like`` is given)."""
        thetabar = self.thetabar[self._index(t, like.shape[0] if like is not None else None)]
        std = self.max_sigma * torch.sqrt(-torch.expm1(-2 * thetabar))
        out = self._shape(std, like)
        return out if like is not None else out.float()

    def q_sample(self, x0: Tensor, mu: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """x_t = m_t + std_t * noise."""
        return self.mean(x0, mu, t) + self.std(t, x0) * noise

    def forward_step(self, x: Tensor, mu: Tensor, t: Tensor | int, noise: Tensor, dt: float | None = None) -> Tensor:
        """One Euler-Maruyama step of the forward SDE from step t - 1 to t (``dt`` may be a fraction of a step)."""
        dt = self.dt if dt is None else dt
        theta = self._table(self.thetas, t, x)
        sigma = self._table(self.sigmas, t, x)
        return x + theta * (mu - x) * dt + sigma * math.sqrt(dt) * noise

    # ------------------------------------------------------------------------------- reverse process

    def noise_to_score(self, noise: Tensor, t: Tensor | int) -> Tensor:
        """score = -noise / std_t."""
        return -noise / self.std(t, noise)

    def reverse_drift(self, x: Tensor, mu: Tensor, score: Tensor, t: Tensor | int) -> Tensor:
        """(theta_t (mu - x) - sigma_t^2 score) * dt: what one reverse step subtracts from x (before noise)."""
        theta = self._table(self.thetas, t, x)
        sigma = self._table(self.sigmas, t, x)
        return (theta * (mu - x) - sigma**2 * score) * self.dt

    def reverse_sde_step(self, x: Tensor, mu: Tensor, score: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """Euler-Maruyama step t -> t - 1 of the reverse SDE: x - reverse_drift + sigma_t sqrt(dt) noise."""
        sigma = self._table(self.sigmas, t, x)
        return x - self.reverse_drift(x, mu, score, t) + sigma * math.sqrt(self.dt) * noise

    def _bridge(self, t: Tensor | int, s: Tensor | int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients (on x_t - mu, on x0 - mu, variance) of q(x_s | x_t, x0)."""
        batch = like.shape[0]
        ti, si = self._index(t, batch), self._index(s, batch)
        if ti.numel() != si.numel() and si.numel() != 1:
            raise ValueError("t and s must have the same number of elements")
        if ti.device.type == "cpu" and bool((si >= ti).any()):
            raise ValueError("the posterior q(x_s | x_t, x0) needs s < t")
        tb_t, tb_s = self.thetabar[ti], self.thetabar[si]
        log_a = -(tb_t - tb_s)
        one_m_a2 = -torch.expm1(2 * log_a)  # 1 - A^2
        one_m_s2 = -torch.expm1(-2 * tb_s)  # 1 - S^2
        one_m_b2 = -torch.expm1(-2 * tb_t)  # 1 - B^2
        c_xt = torch.exp(log_a) * one_m_s2 / one_m_b2
        c_x0 = torch.exp(-tb_s) * one_m_a2 / one_m_b2
        var = self.max_sigma**2 * one_m_a2 * one_m_s2 / one_m_b2
        return self._shape(c_xt, like), self._shape(c_x0, like), self._shape(var, like)

    def posterior(self, x: Tensor, x0: Tensor, mu: Tensor, t: Tensor | int, s: Tensor | int) -> tuple[Tensor, Tensor]:
        """Mean and std of q(x_s | x_t = x, x0), 0 <= s < t (OU bridge; std is 0 at s = 0, where the mean is x0)."""
        c_xt, c_x0, var = self._bridge(t, s, x)
        mean = mu + c_xt * (x - mu) + c_x0 * (x0 - mu)
        return mean, var.clamp_min(0).sqrt()

    def optimal_prev(self, x: Tensor, x0: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """The paper's eq (6), x*_{t-1} given x_t and x0 -- identical to ``posterior(x, x0, mu, t, t - 1)[0]``."""
        ti = self._index(t, x.shape[0])
        return self.posterior(x, x0, mu, ti, ti - 1)[0]

    def as_noise(self, out: Tensor, x: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """The network's answer as the noise of x_t: itself for "noise", (x_t - m_t(out)) / std_t for "x0"."""
        if self.prediction == "noise":
            return out
        return (x - self.mean(out, mu, t)) / self.std(t, x)

    def as_x0(self, out: Tensor, x: Tensor, mu: Tensor, t: Tensor | int) -> Tensor:
        """The network's answer as an x0 estimate: ``predict_x0`` for "noise", itself for "x0"."""
        return self.predict_x0(x, mu, out, t) if self.prediction == "noise" else out

    def predict_x0(self, x: Tensor, mu: Tensor, noise: Tensor, t: Tensor | int) -> Tensor:
        """Invert ``q_sample`` with a predicted noise: x0 = mu + (x - mu - std_t noise) / exp(-thetabar_t).

        The division amplifies noise-prediction errors by up to 1/eps at t = T (200x by default); samplers that
        start at T therefore clip the estimate to the data range.
        """
        return mu + (x - mu - self.std(t, x) * noise) / self.decay(t, x)

    def start(self, mu: Tensor, noise: Tensor, t: int | None = None) -> Tensor:
        """x_t (default t = T) from the marginal with x0 := mu: mu + std_t noise (a truncated start when t < T)."""
        t = self.T if t is None else int(t)
        return mu + self.std(t, mu) * noise

    # ----------------------------------------------------------------------------------- training

    def loss(self, net: NoiseNet, x0: Tensor, mu: Tensor, t: Tensor | int, noise: Tensor) -> Tensor:
        """Eq (5): mean L1 between x_t - reverse_drift(x_t, mu, score(net), t) and ``optimal_prev`` (gamma_t = 1).

        With ``prediction="x0"`` the loss is the mean L1 between the net's x0 and x0: eq (5) would weight its x0
        by exp(-thetabar_t) / std_t, which all but vanishes at large t, exactly where a few-step sampler starts.
        """
        ti = self._index(t, x0.shape[0])
        xt = self.q_sample(x0, mu, ti, noise)
        # the net may run under autocast: its low-precision output is promoted before any SDE arithmetic
        out = net(xt, mu, ti).to(xt.dtype)
        if self.prediction == "x0":
            return (out - x0).abs().mean()
        score = self.noise_to_score(out, ti)
        pred_prev = xt - self.reverse_drift(xt, mu, score, ti)
        with torch.no_grad():
            target = self.optimal_prev(xt, x0, mu, ti)
        return (pred_prev - target).abs().mean()

    def noise_oracle(self, x0: Tensor) -> NoiseNet:
        """A "network" that knows x0: (x_t - m_t) / std_t.  For tests and sanity checks of samplers."""

        def net(x: Tensor, mu: Tensor, t: Tensor) -> Tensor:
            return (x - self.mean(x0, mu, t)) / self.std(t, x)

        return net
