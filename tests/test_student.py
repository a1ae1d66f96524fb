"""CoME distilled into one network (``planners.student``): its teacher, objective, CLI and planner."""

import json

import pytest
import torch
from test_come_planning import plan
from test_memory_eval import memory_data, tiny_memory_ckpt

from nav_come.compose import ComposedDenoiser
from nav_come.core.checkpoint import CONFIG, checkpoint_hash
from nav_come.core.data import poses, read_trajectory
from nav_come.core.layout import checkpoints_fingerprint
from nav_come.experts import SpatialExpert, load_expert
from nav_come.world_model import WorldModel
from planners import cem
from planners.methods import MethodUnavailable, load_method
from planners.student import conditions, main, student_loss, teacher


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("student")
    memory_data(root / "data")
    tiny_memory_ckpt(root / "ckpt", experts=("sltm",), ltm=False)
    tr = read_trajectory(root / "data" / "traj_001")
    frames = torch.from_numpy(tr.frames).float().div(255).movedim(-1, -3)  # (T, 3, H, W)
    return {"root": root, "frames": frames, "poses": poses(tr.position, tr.yaw)}


def batch(wm: WorldModel, distance: torch.Tensor) -> dict:
    """A batch of windows for a tiny world model, with the given nearest-retrieval distances (B,)."""
    g, c, s = torch.Generator().manual_seed(0), wm.dit.config.latent_channels, wm.dit.config.latent_size
    B = len(distance)
    return {"context": torch.randn(B, 4, c, s, s, generator=g), "target": torch.randn(B, c, s, s, generator=g),
            "action": torch.randn(B, 3, generator=g), "shift": torch.ones(B, dtype=torch.long),
            "extra_frames": torch.randn(B, 2, c, s, s, generator=g), "extra_cond": torch.randn(B, 14, generator=g),
            "distance": distance}  # fmt: skip


def test_the_teacher_is_the_composition_the_planner_samples_without_the_ltm(setup):
    ckpt = setup["root"] / "ckpt"
    planner = load_method("come", ckpt, alphas={"ltm": 0}, sampler_steps=1, search="paper", precision="fp32")
    assert list(planner.denoiser.experts) == ["base", "sltm"]
    wm, sltm = WorldModel.from_pretrained(ckpt), load_expert(ckpt / "sltm")
    composed = teacher(wm.dit, sltm, wm.schedule, bf16=False)
    b = batch(wm, torch.tensor([0.1, 0.5, 1.0, float("inf")]))  # near, in the band, far, nothing found
    x_t, t = torch.randn_like(b["target"]), torch.tensor([1.0, 1.0, 0.5, 0.2])
    expected = planner.denoiser(x_t, t, conditions(b))
    assert torch.equal(composed(x_t, t, conditions(b)), expected)
    alone = ComposedDenoiser({"sltm": sltm})(x_t, t, conditions(b))
    assert not torch.allclose(expected, alone)  # the base takes a share where the retrieval is not near
    assert torch.allclose(expected[0], alone[0], atol=0.1 * alone[0].abs().max().item())  # near: mostly the SLTM


def test_a_student_that_is_its_teacher_has_zero_loss(setup):
    wm = WorldModel.from_pretrained(setup["root"] / "ckpt")
    same = SpatialExpert.from_base(wm.dit)  # zero memory pathways: exactly the base, so base and SLTM agree
    composed = teacher(wm.dit, same, wm.schedule, bf16=False)
    b = batch(wm, torch.tensor([0.1, 0.5, 1.0, float("inf")]))
    assert student_loss(same, composed, b, torch.Generator().manual_seed(1)).item() < 1e-10
    other = load_expert(setup["root"] / "ckpt" / "sltm")
    assert student_loss(other, composed, b, torch.Generator().manual_seed(1)).item() > 1e-4


def test_the_cli_trains_resumes_and_the_student_plans_alone(setup):
    root = setup["root"]
    args = ["--ckpt", str(root / "ckpt"), "--data", str(root / "data"), "--out", str(root / "out"), "--steps", "2",
            "--batch-size", "4", "--val-every", "1", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    meta = json.loads((root / "out" / "student" / CONFIG).read_text())["metadata"]
    assert meta["teacher"] == ["base", "sltm"] and meta["steps"] == 2 and isinstance(meta["val_loss"], float)
    assert meta["sltm_hash"] == checkpoint_hash(root / "ckpt" / "sltm")
    assert meta["command"].startswith("python -m planners.student --ckpt")
    before = checkpoint_hash(root / "out" / "student")
    assert main(args) == 0  # finished: nothing changes
    assert checkpoint_hash(root / "out" / "student") == before
    with pytest.raises(MethodUnavailable, match="planners.student"):
        load_method("come-student", root / "ckpt")
    fingerprint = checkpoints_fingerprint(root / "ckpt")
    (root / "out" / "student").rename(root / "ckpt" / "student")
    assert checkpoints_fingerprint(root / "ckpt") == fingerprint  # opt-in: other methods' kept results stay valid
    p = load_method("come-student", root / "ckpt", cem_config=cem.CEMConfig(n_candidates=6, top_k=2),
                    distance="dssim", sampler_steps=1, rollouts=1, search="paper")  # fmt: skip
    assert list(p.denoiser.experts) == ["student"] and p.name == "CoME (student)"
    p.observe(setup["frames"][:41], setup["poses"][:41])
    result = plan(p, setup)
    assert result.waypoints.shape == (8, 3) and torch.isfinite(result.waypoints).all()
    assert p.denoiser.last.forwards == 1  # one network, one forward per prediction


def test_the_cli_names_a_missing_teacher_in_one_line(setup, tmp_path, capsys):
    tiny_memory_ckpt(tmp_path / "bare", experts=(), ltm=False, policies=False)
    args = ["--ckpt", str(tmp_path / "bare"), "--data", str(setup["root"] / "data"), "--out", str(tmp_path / "o")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sltm" in err and "train_expert" in err
