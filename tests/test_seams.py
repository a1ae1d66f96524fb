"""The planner seams: one registry, one config, one checkpoint layout, one planner contract."""

import argparse
import shutil

import pytest
import torch
from test_memory_eval import memory_data, tiny_memory_ckpt
from test_world_model import SIZE

from nav_come.core.data.config import data_config
from nav_come.core.layout import CheckpointLayout, MissingCheckpoint
from planners.config import REGISTRY, TABLE, PlanConfig, add_plan_args, method, plan_config_from_args
from planners.methods import load_method
from planners.planner import Planner, WorldModelPlanner
from planners.policy_common import builtin_policies


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny world model with STM and SLTM experts, the LTM's settings, a GNM and a NoMaD, and the
    SLTM again as a CoME student."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("seams")
    memory_data(root / "data")
    tiny_memory_ckpt(root / "ckpt", experts=("stm", "sltm"))
    shutil.copytree(root / "ckpt" / "sltm", root / "ckpt" / "student")
    for name, policy in builtin_policies().items():
        torch.manual_seed(0)
        policy(policy.make_config("tiny")).save(root / "ckpt" / name)
    return root / "ckpt"


SMALL = PlanConfig(distance="dssim", rollouts=1, precision="fp32")


@pytest.mark.parametrize("key", list(REGISTRY))
def test_every_registered_method_is_a_planner(ckpt, key):
    from planners import cem

    config = PlanConfig(cem.CEMConfig(n_candidates=4, top_k=2), "dssim", rollouts=1, precision="fp32")
    planner = load_method(key, ckpt, config=config)
    assert isinstance(planner, Planner)  # the protocol's call, observe and reset
    m = REGISTRY[key]
    assert planner.image_size == SIZE and planner.context_frames == 4
    assert planner.uses_memory == bool(m.experts) and planner.precision == "fp32"
    planner.reset()
    ctx, goal = torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)
    res = planner(ctx, goal, torch.Generator().manual_seed(0))
    assert res.waypoints.shape == (8, 3) and torch.isfinite(res.waypoints).all()
    assert load_method(m.label, ckpt, config=config).__class__ is planner.__class__  # labels name it too


def test_nwm_is_the_base_expert_alone(ckpt):
    nwm = load_method("nwm", ckpt, config=SMALL)
    assert isinstance(nwm, WorldModelPlanner) and list(nwm.denoiser.experts) == ["base"]
    assert nwm.denoiser.alphas == {"base": 1.0} and nwm.denoiser.experts["base"].network is nwm.world_model.dit
    come = load_method("come", ckpt, config=SMALL)
    assert type(come) is type(nwm) and list(come.denoiser.experts) == ["base", "ltm", "sltm"]


def test_the_registry_names_each_method_once():
    assert len({m.label for m in REGISTRY.values()}) == len(REGISTRY)
    assert TABLE == ["GNM", "NoMaD", "NWM", "NWM (paper protocol)", "CoME (student)", "NWM+STM", "NWM+LTM"]
    assert method("CoME") is method("come") is REGISTRY["come"]
    with pytest.raises(ValueError, match="unknown method 'foo'"):
        method("foo")


@pytest.mark.parametrize("bad, match", [({"rollouts": 0}, "rollouts must be >= 1"),
                                        ({"sampler_steps": 0}, "sampler steps"),
                                        ({"distance": "l2"}, "unknown goal distance 'l2'"),
                                        ({"precision": "fp16"}, "unknown precision 'fp16'"),
                                        ({"length_weight": float("nan")}, "penalty weights must be >= 0"),
                                        ({"progress_weight": -1.0}, "progress -1"),
                                        ({"progress_reduce": "max"}, "unknown progress reduction"),
                                        ({"route_weight": float("nan")}, "route nan"),
                                        ({"alphas": {"xyz": 1.0}}, "unknown experts"),
                                        ({"spacing": 0.0}, "spacing must be > 0")])  # fmt: skip
def test_a_bad_plan_config_names_the_value(bad, match):
    with pytest.raises(ValueError, match=match):
        PlanConfig(**bad)


def test_the_cli_group_is_the_config():
    p = argparse.ArgumentParser()
    add_plan_args(p)
    config = plan_config_from_args(p.parse_args([]), data_config("nav_come_sim"))
    assert {k: v for k, v in vars(config).items() if k != "cem_config"} == {
        k: v for k, v in vars(PlanConfig()).items() if k != "cem_config"} | {"alphas": {}, "relevance": {}}
    assert config.cem_config.n_candidates == 120 and config.cem_config.top_k == 5
    args = p.parse_args(["--steps", "2", "--rollouts", "1", "--distance", "pixel_mse", "--alpha", "stm=1.5",
                         "--candidates", "10", "--top-k", "3", "--precision", "fp32", "--length-weight", "0.5"])
    config = plan_config_from_args(args, data_config("nav_come_sim"))
    assert (config.sampler_steps, config.rollouts, config.distance, config.alphas) == (2, 1, "pixel_mse", {"stm": 1.5})
    assert (config.cem_config.n_candidates, config.cem_config.top_k, config.precision) == (10, 3, "fp32")
    assert config.length_weight == 0.5
    for bad in (["--top-k", "200"], ["--steps", "0"], ["--rollouts", "0"]):
        with pytest.raises(ValueError):
            plan_config_from_args(p.parse_args(bad), data_config("nav_come_sim"))


def test_the_layout_says_how_to_make_a_missing_part(tmp_path):
    layout = CheckpointLayout(tmp_path / "ck")
    with pytest.raises(MissingCheckpoint, match=r"STM expert checkpoint .*ck/stm is missing; train it with "
                                                r"`python -m nav_come.train_expert --expert stm"):  # fmt: skip
        layout.need("stm")
    with pytest.raises(MissingCheckpoint, match=r"1-step distilled sltm .* --out .*ck/distilled`"):
        layout.need("sltm", steps=1)
    (tmp_path / "ck" / "gnm").mkdir(parents=True)
    assert layout.need("gnm") == tmp_path / "ck" / "gnm" and layout.has("gnm") and not layout.has("nomad")
    other = CheckpointLayout(tmp_path / "ck", distilled=tmp_path / "d")
    assert other.folder("base", steps=2) == tmp_path / "d" / "2step" / "base"


def test_the_fingerprint_follows_the_parts_a_result_reads(ckpt, tmp_path):
    import shutil

    from nav_come.core.layout import checkpoints_fingerprint

    root = tmp_path / "ck"
    shutil.copytree(ckpt, root)
    before = checkpoints_fingerprint(root)
    shutil.copytree(root / "gnm", root / "progress")  # an opt-in head: runs that use it record it themselves
    assert checkpoints_fingerprint(root) == before
    shutil.copytree(root / "gnm", root / "collision")
    assert checkpoints_fingerprint(root) != before
