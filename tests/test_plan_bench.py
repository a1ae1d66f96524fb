"""The planning benchmark (``python -m eval.bench plan``) and the plan timing it reads."""

import json

import pytest
import torch
from test_memory_eval import tiny_memory_ckpt
from test_world_model import SIZE, tiny_world_model

from eval import bench
from planners import cem
from planners.cost import GoalDistance
from planners.methods import DEFAULT_SAMPLER_STEPS, PlanResult, WorldModelPlanner
from planners.timing import SECTIONS, PlanTimer

SPLIT = {"encode", "denoise", "decode", "cost", "cem"}
N, R = 4, 2  # candidates, rollouts


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bench")
    tiny_memory_ckpt(root / "ckpt", experts=("stm",))  # no SLTM: CoME is skipped
    out = root / "plan.json"
    args = ["plan", "--ckpt", str(root / "ckpt"), "--steps", "1", "2", "--plans", "1", "--candidates", str(N),
            "--rollouts", str(R), "--threads", "1", "--unbatched", "--precision", "fp32",
            "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    return json.loads(out.read_text())


def test_plan_json_contract(report):
    assert isinstance(report["machine"], str) and report["default_steps"] == DEFAULT_SAMPLER_STEPS
    rows = report["rows"]
    assert [(r["method"], r["sampler_steps"]) for r in rows] == [
        (m, s) for m in ("NWM", "NWM+STM", "NWM+LTM") for s in (1, 2)
    ]
    for r in rows:
        assert r["sampler"] == "multistep" and isinstance(r["sampler_steps"], int) and r["precision"] == "fp32"
        assert isinstance(r["s_per_plan"], float) and r["s_per_plan"] > 0
        assert isinstance(r["forwards_per_plan"], int) and isinstance(r["batch"], int)
        assert set(r["split_s"]) == SPLIT and all(isinstance(v, float) and v >= 0 for v in r["split_s"].values())
        assert sum(r["split_s"].values()) == pytest.approx(r["s_per_plan"], abs=1e-3)  # one plan: the split is it
        assert r["split_s"]["denoise"] > 0 and r["split_s"]["encode"] > 0
    assert set(report["skipped"]) == {"CoME", "CoME (student)", "distilled"}
    assert "sltm" in report["skipped"]["CoME"].lower()
    assert "student" in report["skipped"]["CoME (student)"].lower()
    assert report["skipped"]["distilled"] == "no distilled checkpoint"
    assert "examples/" in report["episode"] and report["protocol"]["candidates"] == N


def test_forward_counts_before_and_after_batching(report):
    rows = {(r["method"], r["sampler_steps"]): r for r in report["rows"]}
    for s in (1, 2):
        calls = 8 * s  # horizon × sampler steps: every candidate and rollout in each call
        nwm, stm, ltm = rows["NWM", s], rows["NWM+STM", s], rows["NWM+LTM", s]
        assert (nwm["forwards_per_plan"], nwm["forwards_unbatched"], nwm["batch"]) == (calls, calls, N * R)
        assert nwm["vs_nwm"] == 1.0 and stm["vs_nwm"] > 0
        if s == 1:  # one-step samplers compose with alpha 1: no partner branches (default_alphas)
            assert (stm["forwards_per_plan"], stm["forwards_unbatched"]) == (2 * calls, 2 * calls)
            assert stm["batches"] == {"base": N * R, "stm": N * R}
            assert (ltm["forwards_per_plan"], ltm["forwards_unbatched"], ltm["batch"]) == (calls, 2 * calls, 2 * N * R)
            assert (stm["forwards_dedup_only"], ltm["forwards_dedup_only"]) == (2 * calls, 2 * calls)
        else:
            # base (alpha 1) + STM and its null partner: two networks, three branches
            assert (stm["forwards_per_plan"], stm["forwards_unbatched"]) == (2 * calls, 3 * calls)
            assert stm["batches"] == {"base": N * R, "stm": 2 * N * R}
            # base + LTM + its partner on one network: the partner is the base's own branch
            assert (ltm["forwards_per_plan"], ltm["forwards_unbatched"], ltm["batch"]) == (calls, 3 * calls, 2 * N * R)
            assert (stm["forwards_dedup_only"], ltm["forwards_dedup_only"]) == (3 * calls, 2 * calls)
        assert all(r[k] > 0 for r in (stm, ltm) for k in ("s_per_plan_unbatched", "s_per_plan_dedup_only"))
        assert "s_per_plan_unbatched" not in nwm
        assert ltm["s_observe"] > 0 and ltm["history_frames"] == 61 and ltm["ltm_memorise_s"] > 0
        assert stm["ltm_memorise_s"] is None and "s_observe" not in nwm


def test_quick_runs_the_default_steps_once_per_method(tmp_path, capsys):
    tiny_memory_ckpt(tmp_path / "ckpt", experts=(), ltm=False)
    args = ["plan", "--quick", "--ckpt", str(tmp_path / "ckpt"), "--methods", "NWM", "NWM+STM",
            "--candidates", "2", "--rollouts", "1", "--json", str(tmp_path / "q.json")]  # fmt: skip
    assert bench.main(args) == 0
    got = json.loads((tmp_path / "q.json").read_text())
    assert [(r["method"], r["sampler_steps"], r["plans"], r["precision"]) for r in got["rows"]] == [
        ("NWM", DEFAULT_SAMPLER_STEPS, 1, p) for p in ("fp32", "bf16")]  # both precisions by default
    out = capsys.readouterr().out
    assert "skipped NWM+STM" in out and "skipped distilled: no distilled checkpoint" in out
    assert bench.main(["plan", "--ckpt", str(tmp_path / "ckpt"), "--methods", "GNM"]) == 2


def test_the_seeded_search_timed_at_several_rollout_counts_side_by_side(tmp_path, capsys):
    """--search seeded times the planners' default search; each --rollouts value is a row, and each
    row's ratio is to NWM at the same rollouts."""
    from planners.config import PlanConfig

    tiny_memory_ckpt(tmp_path / "ckpt", experts=(), ltm=False)
    args = ["plan", "--quick", "--ckpt", str(tmp_path / "ckpt"), "--methods", "NWM", "--search", "seeded",
            "--rollouts", "2", "1", "--precision", "fp32", "--json", str(tmp_path / "s.json")]  # fmt: skip
    assert bench.main(args) == 0
    got = json.loads((tmp_path / "s.json").read_text())
    assert got["protocol"]["search"] == "seeded" and got["protocol"]["rollouts"] == [2, 1]
    rows = {r["rollouts"]: r for r in got["rows"]}
    assert set(rows) == {1, 2} and all(r["vs_nwm"] == 1.0 for r in rows.values())
    c = PlanConfig()
    proposals, refined = c.proposals_nomad + c.proposals_gnm, c.refine + 1  # the best so far is rescored
    for r, row in rows.items():  # one denoiser call per horizon step and iteration, every candidate x rollout in it
        assert row["forwards_per_plan"] == 8 * c.seeded_iterations
        assert row["batch"] == max(proposals, refined) * r and row["samples_per_plan"] == 8 * (proposals + refined) * r
    assert "the seeded search" in capsys.readouterr().out
    assert bench.main([*args[:-2], "--rollouts", "0"]) == 2


def test_precisions_side_by_side_with_the_cpu_and_what_auto_picks(tmp_path, capsys):
    from nav_come.core.precision import resolve

    tiny_memory_ckpt(tmp_path / "ckpt", experts=(), ltm=False)
    args = ["plan", "--quick", "--ckpt", str(tmp_path / "ckpt"), "--methods", "NWM", "--candidates", "2",
            "--rollouts", "1", "--precision", "fp32", "bf16", "auto", "--json", str(tmp_path / "p.json")]  # fmt: skip
    assert bench.main(args) == 0
    got = json.loads((tmp_path / "p.json").read_text())
    assert [r["precision"] for r in got["rows"]] == ["fp32", "bf16"]  # auto is one of them: timed once
    assert all(r["vs_nwm"] == 1.0 for r in got["rows"])  # each precision against NWM at the same precision
    assert got["auto_precision"] == resolve("auto") and isinstance(got["cpu_flags"]["flags"], list)
    assert {"capability", "native_bf16", "onednn_max_cpu_isa"} <= set(got["cpu_flags"])
    assert f"--precision auto picks {resolve('auto')}" in capsys.readouterr().out


def _planner(**kw) -> WorldModelPlanner:
    return WorldModelPlanner(tiny_world_model(), cem.CEMConfig(n_candidates=4, top_k=2), GoalDistance(**kw), 1)


@pytest.mark.parametrize("kind", ["dssim", "latent_mse"])
def test_a_plan_encodes_its_context_once_and_charges_its_sections(kind, monkeypatch):
    planner = _planner(kind=kind)
    planner.world_model.sampler_steps = 2
    encoded = []
    encode = planner.world_model.ae.encode
    monkeypatch.setattr(planner.world_model.ae, "encode", lambda x: encoded.append(len(x)) or encode(x))
    ctx, goal = torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)
    untimed = planner(ctx, goal, torch.Generator().manual_seed(0), imagine=True)
    assert encoded == [4] + [1] * (kind == "latent_mse")  # context once (imagining reuses it); a latent goal once
    planner.timer = PlanTimer()
    timed = planner(ctx, goal, torch.Generator().manual_seed(0))
    assert torch.equal(timed.waypoints, untimed.waypoints) and timed.cost == untimed.cost  # timing changes nothing
    seconds = planner.timer.seconds
    assert set(seconds) == set(SECTIONS) and seconds["encode"] > 0 and seconds["denoise"] > 0
    assert seconds["cost"] > 0 and (seconds["decode"] > 0) == (kind == "dssim")  # latent costs never decode


def test_a_warm_start_is_where_the_cem_starts(monkeypatch):
    planner, seen = _planner(kind="dssim"), []
    plan = cem.plan

    def spy(cost, cfg, generator, mean, std):
        seen.append((mean, std))
        return plan(cost, cfg, generator, mean, std)

    monkeypatch.setattr(cem, "plan", spy)
    ctx, goal = torch.rand(1, 4, 3, SIZE, SIZE), torch.rand(3, SIZE, SIZE)
    first = planner(ctx, goal, torch.Generator().manual_seed(0))
    planner(ctx, goal, torch.Generator().manual_seed(0), warm_start=first)
    assert seen[0] == (None, None) and seen[1][0] is first.mean and seen[1][1] is first.std
    assert isinstance(first, PlanResult) and first.mean.shape == (3,)
