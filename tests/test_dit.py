import time

import pytest
import torch

from nav_come.core.checkpoint import load_checkpoint, save_checkpoint
from nav_come.dit import DIT_PRESETS, DiT, DiTConfig, dit_config, dit_training_loss


def perturb(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Move every weight (the zero-initialised ones too) so outputs depend on all inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def inputs(config: DiTConfig, B: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, s = config.latent_channels, config.latent_size
    return {
        "x_t": torch.randn(B, c, s, s, generator=g),
        "t": torch.rand(B, generator=g),
        "context": torch.randn(B, config.context, c, s, s, generator=g),
        "action": torch.randn(B, 3, generator=g),
        "shift": torch.randint(1, config.max_shift + 1, (B,), generator=g),
    }


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return perturb(DiT(dit_config("tiny"))).eval()


@pytest.mark.parametrize("preset", sorted(DIT_PRESETS))
def test_every_preset_forward_shape(preset):
    model = DiT(dit_config(preset))
    with torch.no_grad():
        v = model(**inputs(model.config))
    assert v.shape == (2, 4, 16, 16) and torch.isfinite(v).all()


def test_small_preset_size():
    n = sum(p.numel() for p in DiT(dit_config("small")).parameters())
    assert 7e6 < n < 8.5e6


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny, small, base"):
        dit_config("huge")


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(latent_size=15), "15"), (dict(width=65), "65"), (dict(context_dropout=1.5), "1.5"), (dict(depth=0), "0")],
)
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiTConfig(**kwargs)


def test_scalar_t_and_shift_broadcast(tiny):
    x = inputs(tiny.config)
    same = {**x, "t": torch.full((2,), 0.3), "shift": torch.tensor([2, 2])}
    assert torch.equal(tiny(**{**x, "t": 0.3, "shift": 2}), tiny(**same))


def test_uncond_is_a_valid_path_that_ignores_the_condition(tiny):
    x = inputs(tiny.config)
    uncond = torch.ones(2, dtype=torch.bool)
    v_cond, v_uncond = tiny(**x), tiny(**x, uncond=uncond)
    assert torch.isfinite(v_uncond).all() and not torch.allclose(v_cond, v_uncond)
    other = {**x, "context": torch.randn_like(x["context"]), "action": torch.randn(2, 3), "shift": x["shift"] % 2 + 1}
    assert torch.allclose(tiny(**other, uncond=uncond), v_uncond, atol=1e-6)
    assert not torch.allclose(tiny(**other), v_cond)


def test_drop_action_ignores_the_action_only(tiny):
    x = inputs(tiny.config)
    drop = torch.ones(2, dtype=torch.bool)
    v = tiny(**x, drop_action=drop)
    assert torch.allclose(tiny(**{**x, "action": torch.randn(2, 3)}, drop_action=drop), v, atol=1e-6)
    assert not torch.allclose(tiny(**{**x, "context": torch.randn_like(x["context"])}, drop_action=drop), v)


def test_mixed_batch_equals_separate_forwards(tiny):
    x = inputs(tiny.config, B=4)
    mask = torch.tensor([False, True, False, True])
    mixed = tiny(**x, uncond=mask)
    for i in range(4):
        one = {k: v[i : i + 1] for k, v in x.items()}
        assert torch.allclose(mixed[i : i + 1], tiny(**one, uncond=mask[i : i + 1]), atol=1e-5)


def test_from_base_starts_exactly_at_the_base(tiny):
    expert = DiT.from_base(tiny, extra_frames=2, extra_cond_dim=6).eval()
    x = inputs(tiny.config)
    memory = {"extra_frames": torch.randn(2, 2, 4, 16, 16), "extra_cond": torch.randn(2, 6)}
    assert torch.equal(expert(**x, **memory), tiny(**x))
    perturb(expert, seed=1)
    assert not torch.allclose(expert(**x, **memory), tiny(**x))


def test_from_base_refuses_a_different_context(tiny):
    with pytest.raises(ValueError, match="patch_embed.weight"):
        DiT.from_base(tiny, context=8)


def test_tiny_overfits_a_few_latents():
    torch.manual_seed(0)
    model = DiT(dit_config("tiny", latent_size=8))
    g = torch.Generator().manual_seed(0)
    batch = {
        "context": torch.randn(4, 4, 4, 8, 8, generator=g),
        "target": torch.randn(4, 4, 8, 8, generator=g),
        "action": torch.randn(4, 3, generator=g),
        "shift": torch.ones(4, dtype=torch.long),
    }

    def fixed_loss() -> float:  # same t and noise every time: compares like with like
        with torch.no_grad():
            return sum(dit_training_loss(model, batch, torch.Generator().manual_seed(s), dropout=False).item()
                       for s in range(8)) / 8  # fmt: skip

    before, start = fixed_loss(), time.monotonic()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(150):
        loss = dit_training_loss(model, batch, torch.Generator().manual_seed(100 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert time.monotonic() - start < 20
    assert fixed_loss() < 0.5 * before


def test_save_load_round_trip_is_exact(tiny, tmp_path):
    save_checkpoint(tmp_path / "base", tiny, "dit")
    loaded, _ = load_checkpoint(tmp_path / "base", "dit")
    x = inputs(tiny.config)
    assert loaded.config == tiny.config
    assert torch.equal(loaded.eval()(**x), tiny(**x))
