"""Contracts of the learned waypoint policies (GNM, NoMaD), over every registered policy."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_fake_dataset

from nav_come.core.data import TrajectoryDataset
from planners.policy_common import builtin_policies, from_xycs, load_policy, to_xycs
from planners.train_policy import collate, main

POLICIES = builtin_policies()
B, SIZE = 3, 32  # the tiny presets take 32x32 frames


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_data")
    make_fake_dataset(root, {"train": 2, "val": 1}, T=48, H=SIZE)
    return root


@pytest.fixture(scope="module")
def batch(data_dir) -> dict[str, torch.Tensor]:
    ds = TrajectoryDataset(data_dir, "train", goal_offset=(1, 20), image_size=SIZE)
    return collate([ds[i] for i in range(0, len(ds), len(ds) // 8)][:8], torch.device("cpu"))


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    torch.manual_seed(0)
    cls = POLICIES[request.param]
    return cls(cls.make_config("tiny"))


def _inputs(seed: int = 0, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 4, 3, size, size, generator=g), torch.rand(B, 3, size, size, generator=g)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_predict_shapes(policy):
    for size in (SIZE, 48):  # other frame sizes are resized to the config's
        out = policy.predict(*_inputs(size=size), generator=_gen())
        assert out["waypoints"].shape == (B, 8, 3) and out["waypoints"].dtype == torch.float32
        assert torch.isfinite(out["waypoints"]).all()
        assert out["waypoints"][..., 2].abs().max() <= torch.pi + 1e-6
        assert out["distance"] is not None and out["distance"].shape == (B,)
    with pytest.raises(ValueError, match=r"\(B, 4, 3, H, W\)"):
        policy.predict(torch.rand(B, 3, 3, SIZE, SIZE), torch.rand(B, 3, SIZE, SIZE))


def test_predict_is_deterministic_under_a_generator(policy):
    context, goal = _inputs()
    a = policy.predict(context, goal, generator=_gen(1))["waypoints"]
    b = policy.predict(context, goal, generator=_gen(1))["waypoints"]
    assert torch.equal(a, b)
    if policy.name == "nomad":  # a sampler: another seed gives another sample
        assert not torch.equal(a, policy.predict(context, goal, generator=_gen(2))["waypoints"])


def test_save_load_round_trip_is_exact(policy, tmp_path):
    (tmp_path / "last").mkdir()  # save() must leave other content of the folder alone
    policy.save(tmp_path, {"note": "x"})
    loaded, policy = load_policy(tmp_path), policy.eval()  # load_policy returns eval mode
    assert type(loaded) is type(policy) and loaded.config == policy.config
    assert loaded.metadata["note"] == "x" and (tmp_path / "last").is_dir()
    context, goal = _inputs()
    a, b = policy.predict(context, goal, generator=_gen(3)), loaded.predict(context, goal, generator=_gen(3))
    assert torch.equal(a["waypoints"], b["waypoints"]) and torch.equal(a["distance"], b["distance"])


def test_short_training_lowers_the_loss(policy, batch):
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    with torch.no_grad():
        before = policy.loss(batch, _gen(0)).item()  # the same draws (t, noise, goal mask) before and after
    for step in range(40):
        loss = policy.loss(batch, _gen(100 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = policy.loss(batch, _gen(0)).item()
    assert after < 0.7 * before, (before, after)


def test_waypoint_encodings_round_trip(batch):
    wp = batch["rel_poses"]  # (N, 8, 3)
    torch.testing.assert_close(from_xycs(to_xycs(wp)), wp, atol=1e-5, rtol=0)
    nomad = POLICIES["nomad"](POLICIES["nomad"].make_config("tiny"))
    torch.testing.assert_close(nomad.decode_actions(nomad.encode_actions(wp)), wp, atol=1e-4, rtol=0)


def test_nomad_goal_masking():
    torch.manual_seed(0)
    nomad = POLICIES["nomad"](POLICIES["nomad"].make_config("tiny"))
    context, goal = _inputs()
    other_goal = torch.rand(B, 3, SIZE, SIZE, generator=_gen(9))
    given = nomad.predict(context, goal, generator=_gen(4))
    masked = nomad.predict(context, goal, generator=_gen(4), goal_mask=True)
    assert not torch.allclose(given["waypoints"], masked["waypoints"])
    assert masked["distance"] is None
    # masked, the goal is invisible: another goal (or none) gives the same sample
    for g in (other_goal, None):
        again = nomad.predict(context, g, generator=_gen(4), goal_mask=True)
        torch.testing.assert_close(again["waypoints"], masked["waypoints"], atol=1e-5, rtol=0)
    assert not torch.allclose(nomad.predict(context, other_goal, generator=_gen(4))["waypoints"], given["waypoints"])
    with pytest.raises(ValueError, match="goal"):
        nomad.predict(context, None)


def test_nomad_ddpm_sampler_recovers_x0_with_an_oracle():
    nomad = POLICIES["nomad"](POLICIES["nomad"].make_config("tiny"))
    x0 = torch.rand(B, 8, 4, generator=_gen(5)) * 2 - 1  # (B, K, 4) in [-1, 1]
    g, x = _gen(6), torch.randn(B, 8, 4, generator=_gen(7))
    for t in reversed(range(nomad.config.diffusion_steps)):
        abar = nomad.abar[t]
        eps = (x - abar**0.5 * x0) / (1 - abar) ** 0.5  # the exact noise of x_t given x0
        x = nomad.ddpm_step(x, eps, t, g)
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)
    assert 0 < nomad.abar[-1] < 1e-3 < nomad.abar[0] < 1  # squaredcos_cap_v2 ends (almost) at pure noise


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_configs_are_validated(name):
    cls = POLICIES[name]
    with pytest.raises(ValueError, match="context_size.*-1"):
        cls.make_config("tiny", context_size=-1)
    with pytest.raises(ValueError, match="unknown .*preset 'huge'"):
        cls.make_config("huge")


def _cli(policy: str, data_dir, out, steps: int) -> int:
    args = ["--policy", policy, "--data", str(data_dir), "--out", str(out), "--preset", "tiny", "--device", "cpu"]
    return main([*args, "--steps", str(steps), "--batch-size", "4", "--val-every", "2", "--val-samples", "8"])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_cli_trains_writes_and_resumes(name, data_dir, tmp_path):
    out = tmp_path / name
    assert _cli(name, data_dir, out, 3) == 0
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["steps"] == 3 and meta["val_n"] == 8 and meta["val_ate"] >= 0
    assert (out / "model.safetensors").is_file() and (out / "last" / "trainer.pt").is_file()
    assert _cli(name, data_dir, out, 5) == 0  # continues from last/ at step 3
    meta = json.loads((out / "config.json").read_text())["metadata"]
    assert meta["steps"] == 5
    assert load_policy(out).predict(*_inputs(), generator=_gen())["waypoints"].shape == (B, 8, 3)


def test_cli_user_mistakes_are_one_line(data_dir, tmp_path, capsys):
    out = str(tmp_path / "o")
    for argv in (
        ["--policy", "vint", "--data", str(data_dir), "--out", out],
        ["--policy", "gnm", "--data", str(tmp_path / "missing"), "--out", out],
        ["--policy", "gnm", "--data", str(data_dir), "--out", out, "--preset", "huge"],
        ["--policy", "gnm", "--out", out],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "error" in err, err
