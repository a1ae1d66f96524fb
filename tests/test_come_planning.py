"""CoME, NWM+STM and NWM+LTM planners (CEM over composed memory experts) and their ATE/RPE rows."""

import json

import numpy as np
import pytest
import torch
from test_memory_eval import memory_data, tiny_memory_ckpt

from eval import ate_rpe
from nav_come.compose import CPU_MAX_BATCH
from nav_come.core.checkpoint import CheckpointError
from nav_come.core.data import poses, read_trajectory
from planners import cem
from planners.methods import (
    DEFAULT_ALPHAS,
    ONE_STEP_ALPHA,
    MethodUnavailable,
    PlanResult,
    WorldModelPlanner,
    default_alphas,
    load_method,
    ltm_expert,
)

FAST = ["--candidates", "6", "--top-k", "2", "--rollouts", "1", "--steps", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("come")
    memory_data(root / "data")
    tiny_memory_ckpt(root / "ckpt", experts=("stm", "sltm"))
    tiny_memory_ckpt(root / "bare", experts=(), ltm=False)
    tr = read_trajectory(root / "data" / "traj_001")
    frames = torch.from_numpy(tr.frames).float().div(255).movedim(-1, -3)  # (T, 3, H, W)
    return {"root": root, "frames": frames, "poses": poses(tr.position, tr.yaw)}


def planner(setup, name: str = "come", ckpt: str = "ckpt") -> WorldModelPlanner:
    cfg = cem.CEMConfig(n_candidates=6, top_k=2)
    return load_method(name, setup["root"] / ckpt, cem_config=cfg, distance="dssim", sampler_steps=2, rollouts=2,
                       search="paper")  # fmt: skip


def plan(p: WorldModelPlanner, setup, t: int = 40, **kw) -> PlanResult:
    frames = setup["frames"]
    return p(frames[None, t - 3 : t + 1], frames[t + 8], torch.Generator().manual_seed(0), **kw)


def test_come_plans_8_waypoints_in_one_batched_rollout_and_uses_the_history(setup, monkeypatch):
    p = planner(setup)
    assert isinstance(p, WorldModelPlanner) and list(p.denoiser.experts) == ["base", "ltm", "sltm"]
    with pytest.warns(UserWarning, match="no episode history"):
        alone = plan(p, setup, imagine=True)
    assert alone.waypoints.shape == (8, 3) and alone.imagined.shape == (8, 3, 32, 32) and alone.note
    p.observe(setup["frames"][:41], setup["poses"][:41])
    assert p.last_observe["frames"] == 41 and p.last_observe["ltm"].frames == 40 - 8 - 4 + 1
    encoded = []
    encode = p.world_model.ae.encode
    monkeypatch.setattr(p.world_model.ae, "encode", lambda x: encoded.append(len(x)) or encode(x))
    p.denoiser.stats.calls = p.denoiser.stats.forwards = 0
    recalled = plan(p, setup)
    assert encoded == [4]  # the context, once per plan (the history was encoded by observe)
    assert p.denoiser.stats.calls == 8 * 2  # one composed rollout: 8 steps × 2 sampler steps, all 12 candidates
    assert p.denoiser.last.forwards == 2  # base + LTM + its partner share one forward; SLTM
    assert recalled.note is None and recalled.waypoints.shape == (8, 3)
    assert recalled.cost != alone.cost
    p.observe(setup["frames"][:41].flip(0), setup["poses"][:41])  # the same places, other views
    assert plan(p, setup).cost != recalled.cost


def test_plans_are_seeded_and_observe_streams(setup):
    p = planner(setup)
    p.observe(setup["frames"][:30], setup["poses"][:30])
    p.observe(setup["frames"][30:41], setup["poses"][30:41], append=True)
    assert len(p.history) == 41 and p.last_observe["ltm"].frames == 11  # only the frames new to the long past
    a, b = plan(p, setup), plan(p, setup)
    assert torch.equal(a.waypoints, b.waypoints) and a.cost == b.cost
    with pytest.warns(UserWarning, match="without poses"):
        p.observe(list((setup["frames"][:10] * 255).byte().permute(0, 2, 3, 1).numpy()))  # navigate.py's call
    assert p.history is None
    with pytest.raises(ValueError, match="10 frames but 9 poses"):
        p.observe(setup["frames"][:10], setup["poses"][:9])


@pytest.mark.parametrize("name, experts", [("nwm+stm", ["base", "stm"]), ("nwm+ltm", ["base", "ltm"])])
def test_single_memory_planners(setup, name, experts):
    p = planner(setup, name)
    assert list(p.denoiser.experts) == experts and p.denoiser.alphas[experts[1]] == 2.0
    p.observe(setup["frames"][:41], setup["poses"][:41])
    assert plan(p, setup).waypoints.shape == (8, 3)


def test_missing_experts_are_one_line_and_the_ltm_needs_no_weights(setup):
    for name, kind in (("come", "sltm"), ("nwm+stm", "stm")):
        with pytest.raises(MethodUnavailable, match=f"{kind.upper()} expert checkpoint .* is missing") as err:
            planner(setup, name, ckpt="bare")
        assert "\n" not in str(err.value) and f"train_expert --expert {kind}" in str(err.value)
    ltm = planner(setup, "nwm+ltm", ckpt="bare").denoiser.experts["ltm"]
    assert ltm.config.exclude_recent == 32 and ltm.config.lora.rank == 16  # defaults without ltm/


def test_ltm_settings_come_from_its_config_and_must_fit_the_base(setup):
    p = planner(setup)
    assert p.denoiser.experts["ltm"].config.exclude_recent == 8  # from ckpt/ltm/config.json (no weights there)
    other = load_method("nwm", setup["root"] / "ckpt").world_model.dit
    other.config.width += 1  # a base the config was not made for
    with pytest.raises(CheckpointError, match="another base"):
        ltm_expert(setup["root"] / "ckpt", other)


def test_ate_rpe_runs_the_memory_methods_and_keeps_nwm_unchanged(setup):
    root, out = setup["root"], setup["root"] / "ate.json"
    args = ["--data", str(root / "data"), "--ckpt", str(root / "ckpt"), "--n-samples", "2", "--seeds", "0", "1",
            "--history", "40", *FAST]  # fmt: skip
    assert ate_rpe.main([*args, "--methods", "NWM", "CoME", "NWM+STM", "NWM+LTM", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    rows = {r["method"]: r for r in got["rows"]}
    assert list(rows) == ["NWM", "CoME", "NWM+STM", "NWM+LTM"] and got["skipped"] == {}
    for m in ("CoME", "NWM+STM", "NWM+LTM"):
        assert np.isfinite(rows[m]["ate"]) and rows[m]["n"] == 2 and rows[m]["s_per_observe"] > 0
    assert "s_per_observe" not in rows["NWM"] and got["protocol"]["history"] == 40
    alone = ate_rpe.run(ate_rpe.build_parser().parse_args([*args, "--methods", "NWM"]))
    assert alone["rows"][0]["ate"] == rows["NWM"]["ate"] and "history" not in alone["protocol"]


def test_navigate_feeds_the_frames_it_sees_into_come_memory(setup, tmp_path, monkeypatch):
    from eval import navigate

    seen = []
    observe = WorldModelPlanner.observe

    def spy(self, frames, poses=None, append=False):
        seen.append((len(frames), poses is not None, append))
        return observe(self, frames, poses, append)

    monkeypatch.setattr(WorldModelPlanner, "observe", spy)
    rc = navigate.main(["--methods", "CoME", "--ckpt", str(setup["root"] / "ckpt"), "--episodes", "2",
                        "--max-steps", "2", "--image-size", "32", "--candidates", "6", "--rollouts", "1",
                        "--steps", "2", "--json", str(tmp_path / "nav.json")])
    assert rc == 0 and json.loads((tmp_path / "nav.json").read_text())["rows"][0]["method"] == "CoME"
    assert all(with_poses for _, with_poses, _ in seen)
    starts = [n for n, _, append in seen if not append]
    assert len(starts) == 2 and starts[1] > 1  # episode 2 is a revisit: the drive from the goal is remembered
    assert any(append for _, _, append in seen)  # frames seen while driving are appended


def test_alpha_zero_leaves_an_expert_out_of_the_composition(setup):
    cfg = cem.CEMConfig(n_candidates=6, top_k=2)
    p = load_method("come", setup["root"] / "ckpt", cem_config=cfg, distance="dssim", sampler_steps=2,
                    alphas={"stm": 0.0, "sltm": 3.0})  # fmt: skip
    assert p.denoiser.alphas == {"base": 1.0, "ltm": 2.0, "sltm": 3.0}
    with pytest.raises(ValueError, match="--alpha"):
        ate_rpe.run(ate_rpe.build_parser().parse_args(["--data", str(setup["root"] / "data"), "--alpha", "bogus=1"]))


def test_one_step_samplers_compose_with_their_own_alphas(setup):
    assert default_alphas(5) == DEFAULT_ALPHAS
    assert default_alphas(1) == {"base": 1.0, **dict.fromkeys(("stm", "ltm", "sltm"), ONE_STEP_ALPHA)}
    cfg = cem.CEMConfig(n_candidates=6, top_k=2)
    p = load_method("come", setup["root"] / "ckpt", cem_config=cfg, distance="dssim", sampler_steps=1)
    assert p.denoiser.alphas == {"base": 1.0, "ltm": ONE_STEP_ALPHA, "sltm": ONE_STEP_ALPHA}
    assert p.denoiser.max_batch == CPU_MAX_BATCH  # on a CPU, two 360-sample branches run as two forwards
