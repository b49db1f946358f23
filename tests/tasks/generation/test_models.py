"""Generation models: noise schedules, DDPM/DDIM samplers, guidance, inpainting, DCGAN shapes and GAN losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionkit.errors import ConfigError
from visionkit.registry import LOSSES, MODELS
from visionkit.tasks.generation.diffusion import make_betas, sampling_timesteps
from visionkit.tasks.generation.gan import HingeLoss, NonSaturatingLoss


def _ddpm(**kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = {"name": "ddpm", "image_size": 8, "channels": 1, "width": 8, "mults": [1, 2], **kwargs}
    model = MODELS.build(spec, task="generation").eval()
    # the U-Net's output convs start at zero; give it non-trivial weights so samplers are exercised
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_linear_schedule_matches_ho_et_al() -> None:
    betas = make_betas("linear", 1000).numpy()
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)


def test_cosine_schedule_matches_closed_form() -> None:
    t_max, s = 50, 0.008
    alpha_bar = np.cumprod(1 - make_betas("cosine", t_max).numpy())
    f = [math.cos((t / t_max + s) / (1 + s) * math.pi / 2) ** 2 for t in range(t_max + 1)]
    expected = np.array(f[1:]) / f[0]
    assert np.allclose(alpha_bar[:-1], expected[:-1], rtol=1e-9)  # the last beta is clipped at 0.999
    assert np.all(np.diff(alpha_bar) < 0)


def test_unknown_schedule_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="schedule"):
        MODELS.build({"name": "ddpm", "schedule": "quadratic"}, task="generation")


def test_sampling_timesteps_are_strided_and_end_at_zero() -> None:
    assert sampling_timesteps(1000, 5) == [999, 749, 500, 250, 0]
    assert sampling_timesteps(10, 50) == list(range(9, -1, -1))


@pytest.mark.parametrize("sampler,steps", [("ddim", 4), ("ddpm", 4)])
def test_sampler_shapes_and_seed_determinism(sampler: str, steps: int) -> None:
    model = _ddpm(timesteps=20)

    def draw(seed: int) -> torch.Tensor:
        return model.generate(3, generator=torch.Generator().manual_seed(seed), sampler=sampler, steps=steps)

    a, b, c = draw(1), draw(1), draw(2)
    assert a.shape == (3, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_ddpm_step_is_ho_et_al_posterior_sample() -> None:
    model = _ddpm(timesteps=20)
    x = torch.randn(2, 1, 8, 8)
    t = 7
    out = model._step(x, t, t - 1, None, 1.0, 1.0, torch.Generator().manual_seed(4))
    # reference: x0 from predicted noise (clipped), posterior mean and variance of q(x_{t-1} | x_t, x0)
    ab, ab_prev = model.alpha_bar[t].double(), model.alpha_bar[t - 1].double()
    beta = 1 - ab / ab_prev
    eps = model.denoiser(x, torch.full((2,), t), None).double()
    x0 = ((x.double() - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
    mean = (ab_prev.sqrt() * beta / (1 - ab)) * x0 + ((1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)) * x.double()
    var = (1 - ab_prev) / (1 - ab) * beta
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4)).double()
    assert torch.allclose(out.double(), mean + var.sqrt() * z, atol=1e-5)


def test_conditional_guidance_changes_samples_and_one_means_plain_conditioning() -> None:
    model = _ddpm(timesteps=20, conditional=True, num_classes=3)
    labels = torch.tensor([0, 1, 2])

    def draw(guidance: float, lab: torch.Tensor | None = labels) -> torch.Tensor:
        return model.generate(3, labels=lab, generator=torch.Generator().manual_seed(0), steps=4, guidance=guidance)

    plain, guided = draw(1.0), draw(3.0)
    assert plain.shape == (3, 1, 8, 8)
    assert not torch.allclose(plain, guided)
    # guidance 0 is the unconditional model: labels no longer matter
    assert torch.allclose(draw(0.0), draw(0.0, torch.tensor([2, 2, 2])), atol=1e-5)


def test_inpainting_keeps_the_known_region_exactly() -> None:
    model = _ddpm(timesteps=20)
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:6, 2:6] = 1
    out = model.inpaint(images, masks, generator=torch.Generator().manual_seed(0), steps=4, resample=2)
    assert out.shape == images.shape
    assert torch.equal(out[masks == 0], images[masks == 0])
    assert not torch.allclose(out[masks == 1], images[masks == 1])


def test_diffusion_training_loss_is_noise_mse() -> None:
    model = _ddpm(timesteps=20)
    model.train()
    torch.manual_seed(3)
    loss = model(torch.zeros(4, 1, 8, 8))
    # replay the same draws: with x0 = 0, x_t = sqrt(1 - ab) * noise
    torch.manual_seed(3)
    t = torch.randint(0, 20, (4,))
    noise = torch.randn(4, 1, 8, 8)
    ab = model.alpha_bar[t].view(4, 1, 1, 1)
    pred = model.denoiser((1 - ab).sqrt() * noise, t, None)
    assert loss.item() == pytest.approx(((pred - noise) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("conditional", [False, True])
def test_dcgan_shapes_and_seeded_generation(conditional: bool) -> None:
    gan = MODELS.build(
        {"name": "dcgan", "image_size": 16, "channels": 3, "width": 16, "conditional": conditional, "num_classes": 4},
        task="generation",
    ).eval()
    a = gan.generate(5, generator=torch.Generator().manual_seed(0))
    b = gan.generate(5, generator=torch.Generator().manual_seed(0))
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b)
    labels = torch.tensor([0, 1, 2, 3, 0]) if conditional else None
    out = gan("discriminator", torch.zeros(5, 3, 16, 16), labels, r1=True)
    assert out["real"].shape == (5,) and out["fake"].shape == (5,) and out["r1"].ndim == 0
    assert gan("generator", torch.zeros(5, 3, 16, 16), labels)["fake"].shape == (5,)


def test_dcgan_rejects_sizes_that_are_not_powers_of_two() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        MODELS.build({"name": "dcgan", "image_size": 24}, task="generation")


def test_r1_penalty_equals_squared_input_gradient() -> None:
    gan = MODELS.build({"name": "dcgan", "image_size": 8, "channels": 1, "width": 8}, task="generation")
    real = torch.randn(3, 1, 8, 8)
    out = gan("discriminator", real, r1=True)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gan.discriminator(x).sum(), x)
    assert out["r1"].item() == pytest.approx(grad.pow(2).sum(dim=(1, 2, 3)).mean().item(), rel=1e-5)


def test_gan_losses_match_hand_calculation() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731 - softplus
    ns = NonSaturatingLoss()
    assert ns.discriminator_loss(real, fake).item() == pytest.approx(
        (sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2, rel=1e-6
    )
    assert ns.generator_loss(fake).item() == pytest.approx((sp(-0.5) + sp(3)) / 2, rel=1e-6)
    hinge = HingeLoss()
    assert hinge.discriminator_loss(real, fake).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert hinge.generator_loss(fake).item() == pytest.approx(1.25)
    assert isinstance(LOSSES.build({"name": "gan_hinge", "r1_gamma": 1.0}, task="generation"), HingeLoss)
    with pytest.raises(ConfigError, match="r1_gamma"):
        LOSSES.build({"name": "gan_hinge", "r1_gamma": -1.0}, task="generation")
