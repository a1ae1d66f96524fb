"""Each simulator world picks its own shipped checkpoint and example; a mismatch warns once."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import plan
from nav_come.core.layout import SHIPPED_ROOT, WORLDS, checkpoint_world, data_world, pick_checkpoint
from nav_come.experts import load_expert
from nav_come.world_model import WorldModel


def _dataset(tmp_path, world):
    folder = tmp_path / f"data_{world}"
    folder.mkdir()
    if world is not None:
        (folder / "dataset.json").write_text(json.dumps({"name": "nav_come_sim", "world": world}))
    return folder


@pytest.mark.parametrize("world", WORLDS)
def test_the_data_names_its_world_and_that_picks_the_shipped_checkpoint(tmp_path, world, capsys):
    data = _dataset(tmp_path, world)
    assert data_world(data) == world
    assert pick_checkpoint(None, data) == SHIPPED_ROOT / world
    assert pick_checkpoint(None, world=world) == SHIPPED_ROOT / world
    assert checkpoint_world(SHIPPED_ROOT / world) == world
    assert capsys.readouterr().err == ""


def test_data_without_a_world_keeps_the_maze_default_and_never_warns(tmp_path, capsys):
    data = _dataset(tmp_path, None)  # e.g. real RECON folders
    assert data_world(data) is None
    assert pick_checkpoint(None, data) == SHIPPED_ROOT / "maze"
    assert pick_checkpoint(SHIPPED_ROOT / "outdoor", data) == SHIPPED_ROOT / "outdoor"
    assert capsys.readouterr().err == ""


def test_a_mismatch_prints_one_warning_line_with_the_fix(tmp_path, capsys):
    given = pick_checkpoint(SHIPPED_ROOT / "maze", _dataset(tmp_path, "outdoor"))
    assert given == SHIPPED_ROOT / "maze"  # the user's choice stands
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "maze worlds" in err and "outdoor" in err and "--ckpt" in err


def test_a_copied_checkpoint_knows_its_world_from_its_metadata(tmp_path):
    copy = tmp_path / "mine"
    shutil.copytree(SHIPPED_ROOT / "outdoor" / "ae", copy / "ae")
    meta = json.loads((copy / "ae" / "config.json").read_text())
    meta["metadata"]["world"] = "maze"  # a training run records the world of its data
    (copy / "ae" / "config.json").write_text(json.dumps(meta))
    assert checkpoint_world(copy) == "maze"


def test_the_outdoor_checkpoint_stores_half_precision_and_loads_as_fp32():
    stored = load_file(SHIPPED_ROOT / "outdoor" / "base" / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}  # half the size in git
    wm = WorldModel.from_pretrained(SHIPPED_ROOT / "outdoor", precision="fp32")
    assert all(p.dtype == torch.float32 for p in wm.parameters())
    name, value = next(iter(stored.items()))
    assert torch.equal(dict(wm.dit.named_parameters())[name].detach(), value.float())


@pytest.mark.parametrize("part", ["stm", "sltm", "ssm", "full", "student"])
def test_the_outdoor_experts_store_half_precision_and_load_as_fp32(part):
    folder = SHIPPED_ROOT / "outdoor" / part
    stored = load_file(folder / "model.safetensors")
    assert {v.dtype for v in stored.values()} == {torch.float16}
    loaded = load_expert(folder).state_dict()
    assert set(loaded) == set(stored) and {v.dtype for v in loaded.values()} == {torch.float32}
    assert all(torch.equal(loaded[k], v.float()) for k, v in stored.items())


def test_plan_cli_world_outdoor_uses_its_checkpoint_and_example(tmp_path, capsys):
    out = tmp_path / "plan.json"
    small = ["--rollouts", "1", "--proposals-nomad", "4", "--proposals-gnm", "2", "--refine", "4"]
    rc = plan.main(["--world", "outdoor", "--goal", "examples/outdoor/goal.png", *small, "--json", str(out),
                    "--figure", str(tmp_path / "p.png")])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "true motion" in printed  # the outdoor example's own truth, from examples/outdoor/example.json
    truth = json.loads((plan.EXAMPLES / "outdoor" / "example.json").read_text())
    assert truth["world"] == "outdoor" and np.array(truth["true_waypoints"]).shape == (8, 3)
    assert np.array(json.loads(out.read_text())["waypoints"]).shape == (8, 3)
