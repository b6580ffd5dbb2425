"""Rectified flow / DDPM maths (snapgen.flow) against closed forms and diffusers' schedulers."""

import numpy as np
import pytest
import torch

from snapgen import flow
from snapgen.flow import GuidanceSchedule

# Toy data distribution N(MU, S² I): the flow's marginals stay Gaussian, so the optimal velocity is analytic and the
# probability-flow ODE maps noise z exactly to MU + S z.
MU, S = 1.5, 0.5


def gaussian_velocity(x, sigma, cond=None):
    """E[ε - x0 | x_σ] for x0 ~ N(MU, S²): v* = -MU + (x - m) var'/(2 var); m = (1-σ) MU, var = (1-σ)² S² + σ²."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
    var = (1 - s) ** 2 * S**2 + s**2
    dvar = -2 * (1 - s) * S**2 + 2 * s
    return -MU + (x - (1 - s) * MU) * dvar / (2 * var)


def test_interpolate_and_target():
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    sigma = torch.tensor([0.0, 0.25, 0.5, 1.0])
    x_t = flow.interpolate(x0, noise, sigma)
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[3], noise[3])
    torch.testing.assert_close(x_t[1], 0.75 * x0[1] + 0.25 * noise[1])
    # The target is the derivative of Eq. 1 in σ.
    eps = 1e-3
    low = sigma.clamp(max=1 - eps)
    fd = (flow.interpolate(x0, noise, low + eps) - flow.interpolate(x0, noise, low)) / eps
    torch.testing.assert_close(fd, flow.velocity_target(x0, noise), atol=1e-3, rtol=1e-3)
    loss = flow.flow_loss(flow.velocity_target(x0, noise) + 1.0, x0, noise)
    assert loss.shape == (4,) and torch.allclose(loss, torch.ones(4))
    assert torch.allclose(flow.flow_loss(torch.zeros_like(x0), x0, x0, reduce="sum"), torch.zeros(4))
    with pytest.raises(ValueError, match="valid choices"):
        flow.flow_loss(x0, x0, noise, reduce="max")


def test_logit_normal_density_and_sampling():
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)[1:-1]
    for loc, scale in [(0.0, 1.0), (0.5, 0.7)]:
        integral = torch.trapezoid(flow.logit_normal_density(t, loc, scale).double(), t).item()
        assert abs(integral - 1.0) < 1e-3, (loc, scale, integral)
    g = torch.Generator().manual_seed(0)
    draws = flow.sample_logit_normal(200_000, generator=g)
    assert 0 < draws.min() and draws.max() < 1
    inside = ((draws > 0.25) & (draws < 0.75)).float().mean().item()
    grid = torch.linspace(0.25, 0.75, 5001, dtype=torch.float64)
    expected = torch.trapezoid(flow.logit_normal_density(grid).double(), grid).item()
    assert abs(inside - expected) < 0.005, (inside, expected)


def test_time_shift_and_sigmas_match_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    assert flow.time_shift(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert flow.time_shift(torch.tensor(1.0), 3.0).item() == pytest.approx(1.0)
    for steps, shift in [(30, 3.0), (4, 3.0), (10, 1.0)]:
        sched = FlowMatchEulerDiscreteScheduler(shift=shift)
        sched.set_timesteps(steps)
        ours = flow.flow_sigmas(steps, shift)
        torch.testing.assert_close(ours, sched.sigmas, atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[:-1] * 1000, sched.timesteps, atol=1e-3, rtol=0)


def _field(x, sigma, cond=None):
    """An arbitrary smooth velocity field to compare step rules."""
    s = sigma.reshape(-1, 1, 1, 1)
    return torch.sin(x) * (1 + s) - 0.3 * x * s


@pytest.mark.parametrize("sampler,scheduler_name", [("euler", "FlowMatchEulerDiscreteScheduler"),
                                                      ("heun", "FlowMatchHeunDiscreteScheduler")])
def test_sampler_matches_diffusers(sampler, scheduler_name):
    import diffusers

    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    sched = getattr(diffusers, scheduler_name)(shift=3.0)
    sched.set_timesteps(8)
    x = noise.clone()
    for t in sched.timesteps:
        x = sched.step(_field(x, (t / 1000).expand(2)), t, x).prev_sample
    ours = flow.sample_flow(_field, noise, 8, shift=3.0, sampler=sampler)
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)
    # One Euler step is Eq. 3.
    sig = flow.flow_sigmas(8)
    v = _field(noise, sig[:1].expand(2))
    torch.testing.assert_close(flow.euler_step(noise, v, sig[0], sig[1]), noise + (sig[1] - sig[0]) * v)


def test_flow_ode_on_gaussian_toy_is_exact():
    noise = torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    exact = MU + S * noise  # the ODE's solution for this noise
    errors = {}
    for sampler, steps in [("euler", 20), ("euler", 200), ("euler", 2000), ("heun", 20), ("heun", 50)]:
        x = flow.sample_flow(gaussian_velocity, noise, steps, shift=3.0, sampler=sampler)
        errors[sampler, steps] = (x - exact).abs().max().item()
    # Euler is first order (error ~ 1/steps), Heun second order; measured: 0.31, 0.031, 0.0035, 0.0063, 0.00086.
    assert errors["euler", 2000] < 5e-3 and errors["euler", 200] < 0.05, errors
    assert errors["euler", 200] < errors["euler", 20] / 5 and errors["heun", 20] < errors["euler", 200] / 3, errors
    assert errors["heun", 50] < 2e-3, errors
    assert abs(x.mean().item() - MU) < 0.01 and abs(x.std().item() - S) < 0.01


def test_cfg_combine_and_varied_schedule():
    u, c = torch.tensor([1.0]), torch.tensor([3.0])
    assert flow.cfg_combine(u, c, 1.0).item() == 3.0
    assert flow.cfg_combine(u, c, 0.0).item() == 1.0
    assert flow.cfg_combine(u, c, 2.5).item() == 1.0 + 2.5 * 2.0
    varied = GuidanceSchedule.varied()  # supplement H: steps [10, 30] of 30, 1.1 -> 5.4
    scales = [varied.scale_at(i, 30) for i in range(30)]
    assert scales[:9] == [1.0] * 9
    assert scales[9] == pytest.approx(1.1) and scales[29] == pytest.approx(5.4)
    assert scales[19] == pytest.approx(1.1 + 10 / 20 * (5.4 - 1.1))
    assert all(b > a for a, b in zip(scales[9:], scales[10:]))
    assert GuidanceSchedule.constant(1.7).scale_at(0, 4) == 1.7
    assert GuidanceSchedule.varied(2, 3, 2.0, 4.0).scale_at(3, 4) == 1.0
    with pytest.raises(ValueError):
        varied.scale_at(30, 30)


def test_sampler_doubles_batch_only_where_guided():
    batch_sizes = []

    def velocity_fn(x, sigma, cond):
        batch_sizes.append(x.shape[0])
        return gaussian_velocity(x, sigma) + cond.reshape(-1, 1, 1, 1)

    noise = torch.randn(3, 1, 2, 2)
    cond, uncond = torch.ones(3), torch.zeros(3)
    flow.sample_flow(velocity_fn, noise, 30, guidance=GuidanceSchedule.varied(), cond=cond, uncond=uncond)
    assert batch_sizes == [3] * 9 + [6] * 21
    # The guided result follows cfg_combine: with v_cond - v_uncond = 1, scale w adds w per unit of σ travelled.
    def offset_fn(x, sigma, cond):  # v_cond - v_uncond = cond - 0, independent of x
        return torch.cos(sigma).reshape(-1, 1, 1, 1) + cond.reshape(-1, 1, 1, 1)

    x1 = flow.sample_flow(offset_fn, noise, 5, guidance=2.0, cond=cond, uncond=uncond)
    x0 = flow.sample_flow(offset_fn, noise, 5, guidance=None, cond=torch.zeros(3))
    torch.testing.assert_close(x1 - x0, torch.full_like(x0, -2.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uncond"):
        flow.sample_flow(velocity_fn, noise, 2, guidance=3.0, cond=cond)


def test_objectives_loss_terms():
    x0 = torch.randn(1, 2, 4, 4).expand(5, -1, -1, -1).contiguous()  # a point mass: optimal predictions are analytic
    g = torch.Generator().manual_seed(0)

    obj = flow.get_objective("flow")
    # v* = (x_t - x0) / σ for a point mass; the net gets timestep = 1000 σ.
    out = obj.loss_terms(lambda x, t, c: (x - x0) / (t / 1000).reshape(-1, 1, 1, 1), x0, None, g)
    assert out["loss"].shape == (5,) and out["loss"].max() < 1e-6
    assert ((0 < out["t"]) & (out["t"] < 1)).all()
    torch.testing.assert_close(out["t"], flow.time_shift(out["u"], 3.0))

    ddpm = flow.get_objective("ddpm")
    ab = ddpm.scheduler.alphas_cumprod

    def eps_star(x, t, c):
        a = ab[t.long()].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    out = ddpm.loss_terms(eps_star, x0, None, g)
    assert out["loss"].shape == (5,) and out["loss"].max() < 1e-6
    assert ((0 <= out["t"]) & (out["t"] < 1)).all()
    assert ddpm.loss_terms(lambda x, t, c: torch.zeros_like(x), x0, None, g)["loss"].mean() > 0.3
    with pytest.raises(ValueError, match="valid choices"):
        flow.get_objective("edm")


def test_ddpm_heun_sampler_on_gaussian_toy():
    ddpm = flow.get_objective("ddpm")
    train_sigmas = ((1 - ddpm.scheduler.alphas_cumprod) / ddpm.scheduler.alphas_cumprod).sqrt().numpy()
    calls = []

    def eps_fn(x_in, t, cond):
        # x_in = x_t (VP form); ᾱ(t) from the same linear-in-σ interpolation that HeunDiscreteScheduler uses.
        calls.append(x_in.shape[0])
        sigma = torch.from_numpy(np.interp(t.numpy(), np.arange(1000), train_sigmas)).float().reshape(-1, 1, 1, 1)
        a = 1 / (1 + sigma**2)
        return (1 - a).sqrt() * (x_in - a.sqrt() * (MU + cond.reshape(-1, 1, 1, 1))) / (a * S**2 + 1 - a)

    noise = torch.randn(2048, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = ddpm.sample(eps_fn, noise, torch.zeros(2048), steps=30)
    assert x.shape == noise.shape
    assert abs(x.mean().item() - MU) < 0.05 and abs(x.std().item() - S) < 0.05
    assert (x - (MU + S * noise)).abs().mean().item() < 0.05
    assert len(calls) == 59  # 30 Heun steps = 2 * 30 - 1 evaluations
    calls.clear()
    x = ddpm.sample(eps_fn, noise[:4], torch.ones(4), torch.zeros(4), steps=30, guidance=GuidanceSchedule.varied())
    assert calls[:18] == [4] * 18 and set(calls[18:]) == {8}  # evaluations of steps 1-9 unguided
    assert torch.isfinite(x).all()
