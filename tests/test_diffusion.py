import math

import pytest
import torch

from nav_come.diffusion import COSINE, SAMPLERS, CosineSchedule, ddim_sample, ddpm_sample, diffusion_loss


def test_schedule_is_a_variance_preserving_cosine():
    t = torch.linspace(0, 1, 101)
    alpha, sigma = COSINE.alpha_sigma(t)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones(101), atol=1e-6)
    assert (alpha[1:] < alpha[:-1]).all()
    assert COSINE.snr(torch.tensor([0.0, 1.0])).log().tolist() == pytest.approx([10.0, -10.0], abs=1e-3)
    assert alpha[-1].item() == pytest.approx(math.sqrt(1 / (1 + math.exp(10))), rel=1e-4)


def test_bad_schedule_is_refused():
    with pytest.raises(ValueError, match="logsnr_min"):
        CosineSchedule(logsnr_min=5, logsnr_max=-5)


def test_v_eps_x0_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, eps, t = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g), torch.rand(5, generator=g)
    x_t = COSINE.add_noise(x0, eps, t)
    v = COSINE.v_target(x0, eps, t)
    assert torch.allclose(COSINE.x0_from_v(x_t, v, t), x0, atol=1e-5)
    assert torch.allclose(COSINE.eps_from_v(x_t, v, t), eps, atol=1e-5)
    assert torch.allclose(COSINE.v_from_eps(x_t, eps, t), v, atol=1e-4)
    assert torch.allclose(COSINE.v_from_x0(x_t, x0, t), v, atol=1e-4)


def oracle(x0: torch.Tensor):
    """A denoiser that knows the answer: its samples must be exactly x0."""

    def denoiser(x_t, t, cond):
        assert t.shape == (x_t.shape[0],) and cond == {"tag": 1}
        return COSINE.v_from_x0(x_t, x0, t)

    return denoiser


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_sampler_returns_the_oracle_answer(sampler, steps):
    x0 = torch.randn(3, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    out = SAMPLERS[sampler](oracle(x0), torch.randn(3, 4, 8, 8, generator=g), steps, {"tag": 1}, g)
    assert torch.allclose(out, x0, atol=1e-4)


def gaussian_denoiser(mean: float, std: float):
    """The exact v-prediction for data x0 ~ N(mean, std**2): E[x0 | x_t] in closed form."""

    def denoiser(x_t, t, cond):
        alpha, sigma = (a.view(-1, 1) for a in COSINE.alpha_sigma(t))
        x0 = mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (x_t - alpha * mean)
        return COSINE.v_from_x0(x_t, x0, t.float())

    return denoiser


@pytest.mark.parametrize("sampler, steps", [(ddim_sample, 200), (ddpm_sample, 500)])
def test_samplers_reproduce_a_gaussian(sampler, steps):
    g = torch.Generator().manual_seed(0)
    out = sampler(gaussian_denoiser(1.5, 0.5), torch.randn(20000, 1, generator=g), steps, None, g)
    assert out.mean().item() == pytest.approx(1.5, abs=0.02)
    assert out.std().item() == pytest.approx(0.5, rel=0.02)  # few steps shrink the std: a discretisation error


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sampling_is_deterministic_under_a_seed(sampler):
    fn = SAMPLERS[sampler]
    denoiser = gaussian_denoiser(0.0, 1.0)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return fn(denoiser, torch.randn(4, 3, generator=g), 4, None, g)

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


def test_zero_steps_is_refused():
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(gaussian_denoiser(0, 1), torch.randn(2, 3), 0, None)


def test_loss_is_zero_for_the_oracle_and_positive_otherwise():
    x0 = torch.randn(6, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    assert diffusion_loss(oracle(x0), x0, {"tag": 1}, g).item() < 1e-8

    def zero(x_t, t, cond):
        return torch.zeros_like(x_t)

    plain = diffusion_loss(zero, x0, None, torch.Generator().manual_seed(1))
    weighted = diffusion_loss(zero, x0, None, torch.Generator().manual_seed(1), min_snr_gamma=5.0)
    assert plain.item() > 0.1 and 0 < weighted.item() < plain.item()
