import pytest
import torch
import torch.nn.functional as F

from nav_come.autoencoder import AEConfig, Autoencoder
from nav_come.core.checkpoint import load_checkpoint, save_checkpoint


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (128, 128), (64, 96)])
def test_shapes_any_size_divisible_by_four(size):
    ae = Autoencoder(AEConfig())
    x = torch.rand(2, 3, *size)
    z = ae.encode(x)
    assert z.shape == (2, 4, size[0] // 4, size[1] // 4)
    y = ae.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_default_matches_the_measured_recipe():
    config = AEConfig()
    ae = Autoencoder(config)
    n = sum(p.numel() for p in ae.parameters())
    assert 0.3e6 < n < 0.5e6
    assert (config.latent_size, config.downsample) == (16, 4)


def test_uint8_equals_float():
    ae = Autoencoder(AEConfig())
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert torch.allclose(ae.encode(x), ae.encode(x.float() / 255))


def test_scale_factor_scales_latents_not_reconstructions():
    ae = Autoencoder(AEConfig())
    x = torch.rand(2, 3, 32, 32)
    z1, y1 = ae.encode(x), ae.decode(ae.encode(x))
    ae.config.scale_factor = 3.0
    assert torch.allclose(ae.encode(x), 3 * z1, atol=1e-6)
    assert torch.allclose(ae.decode(ae.encode(x)), y1, atol=1e-5)


def test_estimated_scale_gives_unit_std():
    ae = Autoencoder(AEConfig())
    x = torch.rand(16, 3, 32, 32)
    ae.config.scale_factor = ae.estimate_scale_factor(x, batch_size=5)
    assert ae.encode(x).std().item() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(widths=(12, 64)), r"\(12, 64\)"),
        (dict(image_size=30), "30"),
        (dict(latent_channels=0), "0"),
        (dict(scale_factor=-1.0), "-1.0"),
    ],
)
def test_config_errors_name_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AEConfig(**kwargs)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    ae = Autoencoder(AEConfig(image_size=32))
    x = F.interpolate(torch.rand(4, 3, 4, 4), size=32, mode="bilinear")  # smooth images, like frames
    opt = torch.optim.AdamW(ae.parameters(), lr=2e-3)
    first = ae.loss(x).item()
    for _ in range(40):
        loss = ae.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


def test_save_load_round_trip_is_exact(tmp_path):
    ae = Autoencoder(AEConfig(image_size=32, scale_factor=1.7))
    save_checkpoint(tmp_path / "ae", ae, "ae", {"steps": 3})
    loaded, meta = load_checkpoint(tmp_path / "ae", "ae")
    x = torch.rand(2, 3, 32, 32)
    assert meta == {"steps": 3} and loaded.config == ae.config
    assert torch.equal(loaded.encode(x), ae.encode(x))
    assert torch.equal(loaded.decode(ae.encode(x)), ae.decode(ae.encode(x)))
