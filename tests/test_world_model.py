import json

import pytest
import torch
from test_dit import perturb

from nav_come.autoencoder import AEConfig, Autoencoder
from nav_come.core.checkpoint import CONFIG, WEIGHTS, CheckpointError, load_checkpoint
from nav_come.dit import DiT, dit_config
from nav_come.world_model import WorldModel

SIZE = 32  # frames 32×32 -> latents 4×8×8


def tiny_world_model(seed: int = 0, **kwargs) -> WorldModel:
    """A randomly initialised world model whose outputs depend on every input."""
    torch.manual_seed(seed)
    ae = Autoencoder(AEConfig(image_size=SIZE, widths=(8, 16, 16)))
    dit = perturb(DiT(dit_config("tiny", latent_size=SIZE // 4)), seed)
    return WorldModel(ae, dit, **kwargs).eval()


@pytest.fixture(scope="module")
def wm():
    return tiny_world_model()


def frames(B: int, T: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(B, T, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("bf16", [True, False])
def test_predict_shapes_from_frames_and_latents(wm, bf16):
    wm.bf16 = bf16
    ctx, actions = frames(3), torch.randn(3, 3)
    out = wm.predict(ctx, actions, generator=gen(), steps=2)
    assert out.shape == (3, 3, SIZE, SIZE) and out.min() >= 0 and out.max() <= 1
    z = wm.predict(wm.encode(ctx), actions, generator=gen(), steps=2, decode=False)
    assert z.shape == (3, 4, 8, 8)
    assert torch.allclose(wm.decode(z), out, atol=1e-5)
    wm.bf16 = True


def test_one_context_broadcasts_over_candidates(wm):
    ctx, actions = frames(1), torch.randn(5, 3)
    broadcast = wm.predict(ctx, actions, generator=gen(), steps=2, decode=False)
    repeated = wm.predict(ctx.expand(5, -1, -1, -1, -1), actions, generator=gen(), steps=2, decode=False)
    assert torch.allclose(broadcast, repeated, atol=1e-6)
    with pytest.raises(ValueError, match="context batch 2"):
        wm.predict(frames(2), actions)


def test_shift_and_action_change_the_prediction(wm):
    ctx, actions = frames(2), torch.randn(2, 3)
    base = wm.predict(ctx, actions, generator=gen(), steps=2, decode=False)
    assert not torch.allclose(base, wm.predict(ctx, actions, shift=3, generator=gen(), steps=2, decode=False))
    assert not torch.allclose(base, wm.predict(ctx, actions + 1, generator=gen(), steps=2, decode=False))


def test_rollout_shapes_and_determinism(wm):
    ctx, actions = frames(1), torch.randn(6, 3, 3)
    a = wm.rollout(ctx, actions, generator=gen(0), steps=2)
    assert a["latents"].shape == (6, 3, 4, 8, 8) and a["frames"].shape == (6, 3, 3, SIZE, SIZE)
    b = wm.rollout(ctx, actions, generator=gen(0), steps=2)
    assert torch.equal(a["frames"], b["frames"])
    c = wm.rollout(ctx, actions, generator=gen(1), steps=2, decode=False)
    assert "frames" not in c and not torch.allclose(c["latents"], a["latents"])


def test_rollout_slides_the_latent_context_and_encodes_once(wm, monkeypatch):
    ctx, actions = frames(2), torch.randn(2, 3, 3)
    first = wm.predict(ctx, actions[:, 0], generator=gen(), steps=2, decode=False)
    calls = []
    encode = wm.ae.encode
    monkeypatch.setattr(wm.ae, "encode", lambda x: calls.append(len(x)) or encode(x))
    out = wm.rollout(ctx, actions, generator=gen(), steps=2, decode=False)
    assert sum(calls) == 2 * 4  # the context frames, once
    assert torch.allclose(out["latents"][:, 0], first, atol=1e-6)
    # step 2 sees context latents 2..4 plus the first prediction
    z = wm.encode(ctx)
    slid = torch.cat([z[:, 1:], out["latents"][:, :1]], 1)
    g = gen()
    wm.predict(z, actions[:, 0], generator=g, steps=2, decode=False)  # advance the generator past step 1
    second = wm.predict(slid, actions[:, 1], generator=g, steps=2, decode=False)
    assert torch.allclose(out["latents"][:, 1], second, atol=1e-5)


def test_mismatched_parts_are_refused():
    ae = Autoencoder(AEConfig(image_size=64))
    with pytest.raises(ValueError, match="do not match"):
        WorldModel(ae, DiT(dit_config("tiny", latent_size=8)))


def test_save_and_from_pretrained_round_trip(wm, tmp_path):
    wm.save(tmp_path / "wm", {"steps": 1})
    loaded = WorldModel.from_pretrained(tmp_path / "wm")
    ctx, actions = frames(2), torch.randn(2, 3, 3)
    a = wm.rollout(ctx, actions, generator=gen(), steps=3)
    b = loaded.rollout(ctx, actions, generator=gen(), steps=3)
    assert torch.equal(a["frames"], b["frames"])


@pytest.fixture
def saved(wm, tmp_path):
    return wm.save(tmp_path / "wm")


def _edit_config(path, **changes):
    header = json.loads((path / CONFIG).read_text())
    header["config"].update(changes)
    (path / CONFIG).write_text(json.dumps(header))


def _truncate(path):
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "break_it, match",
    [
        (lambda d: (d / "base" / WEIGHTS).unlink(), "has no model.safetensors"),
        (lambda d: _truncate(d / "base"), "corrupt"),
        (lambda d: (d / "base" / WEIGHTS).write_bytes(b"not safetensors at all"), "corrupt"),
        (lambda d: (d / "base" / CONFIG).write_text("{oops"), "not valid JSON"),
        (lambda d: _edit_config(d / "base", width=96, heads=2), "tensor '.*' has shape"),
        (lambda d: _edit_config(d / "base", preset="huge"), "unknown preset 'huge'"),
        (lambda d: _edit_config(d / "base", wings=2), "unknown DiTConfig fields"),
        (lambda d: _edit_config(d / "base", depth=0), "invalid config"),
        (lambda d: (d / "ae" / CONFIG).write_text((d / "base" / CONFIG).read_text()), "'dit' checkpoint but a 'ae'"),
    ],
)
def test_bad_checkpoints_raise_one_clear_line(saved, break_it, match):
    break_it(saved)
    with pytest.raises(CheckpointError, match=match) as info:
        WorldModel.from_pretrained(saved)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("sub", ["", "base"])
def test_missing_folders_say_what_to_pass(saved, sub):
    if sub:
        (saved / sub / WEIGHTS).unlink()
        (saved / sub / CONFIG).unlink()
        (saved / sub).rmdir()
    with pytest.raises(CheckpointError, match="does not exist"):
        WorldModel.from_pretrained(saved if sub else saved / "missing")


def test_load_checkpoint_checks_the_kind(saved):
    with pytest.raises(CheckpointError, match="'ae' checkpoint but a 'dit'"):
        load_checkpoint(saved / "ae", "dit")
