"""The memory ablation table (``eval/predict.py --memory``): contract, skipped rows, seeds, mistakes."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import add_tiny_policies, make_fake_dataset
from test_dit import perturb
from test_experts import LATENT, episode, query
from test_world_model import tiny_world_model

from eval.memory_table import COPY_NEAREST, ROWS, CopyNearest
from eval.predict import main
from nav_come.compose import rollout
from nav_come.core.checkpoint import WEIGHTS
from nav_come.diffusion import COSINE
from nav_come.experts import FullExpert, LTMExpert, SpatialExpert, SSMExpert, STMExpert, copy_nearest, save_expert

NAMES = [*ROWS, COPY_NEAREST]
KEYS = {"method", "psnr", "psnr_se", "ssim", "ssim_se", "lpips", "s_per_frame", "peak_mb", "n", "context"}
TRAINED = {
    "stm": lambda base: STMExpert.from_base(base, window=8),
    "sltm": SpatialExpert.from_base,
    "ssm": SSMExpert.from_base,
    "full": FullExpert.from_base,
}


def tiny_memory_ckpt(folder, experts=tuple(TRAINED), ltm: bool = True, policies: bool = True):
    """A tiny world model with random experts beside it, the LTM's settings only (no weights), and
    with ``policies`` untrained tiny GNM and NoMaD (the seeded search's proposals)."""
    wm = tiny_world_model()
    wm.save(folder)
    if policies:
        add_tiny_policies(folder)
    for i, kind in enumerate(experts):
        expert = TRAINED[kind](wm.dit)
        perturb(expert.network, i + 1)  # memory pathways included: the experts differ from the base
        save_expert(folder / kind, expert)
    if ltm:
        save_expert(folder / "ltm", LTMExpert.attach(copy.deepcopy(wm.dit), exclude_recent=8, batch_size=2,
                                                     steps_per_frame=0.25))  # fmt: skip
        (folder / "ltm" / WEIGHTS).unlink()  # the convention: config.json alone
    return folder


def memory_data(folder):
    """Looping trajectories (revisits every 24 frames) with a hand-written memory_eval.json."""
    names = make_fake_dataset(folder, {"train": 1, "test": 1}, T=60, H=32, loop=True)
    traj = names["test"][0]
    samples = [{"traj": traj, "t": t, "context": t + 1, "horizon": 4} for t in (40, 47, 53)]
    (folder / "splits" / "test" / "memory_eval.json").write_text(json.dumps(samples))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("memory")
    memory_data(root / "data")
    tiny_memory_ckpt(root / "ckpt")
    shutil.copytree(root / "ckpt" / "sltm", root / "ckpt" / "student")  # an SLTM-shaped network as the student
    tiny_memory_ckpt(root / "bare", experts=(), ltm=False)
    return root


def run(setup, *extra, ckpt="ckpt"):
    args = ["--memory", "--data", str(setup / "data"), "--ckpt", str(setup / ckpt), "--steps", "2", "--threads", "1"]
    return main([*args, "--context", "12", "40", *extra])


@pytest.fixture(scope="module")
def report(setup):
    out = setup / "m.json"
    assert run(setup, "--json", str(out), "--figure", str(setup / "m.png"), "--seed", "3") == 0
    return json.loads(out.read_text())


def test_json_contract_rows_and_figure(setup, report):
    assert [(r["method"], r["context"]) for r in report["rows"]] == [(m, L) for L in (12, 40) for m in NAMES]
    for row in report["rows"]:
        assert set(row) >= KEYS
        assert isinstance(row["psnr"], float) and isinstance(row["ssim"], float) and row["psnr_se"] >= 0
        assert row["lpips"] is None and row["n"] == 3  # no LPIPS weights on this machine
        assert row["s_per_frame"] > 0 and row["peak_mb"] >= 0
        assert len(row["psnr_per_seq"]) == row["n"] and np.mean(row["psnr_per_seq"]) == pytest.approx(row["psnr"])
    assert report["skipped"] == {} and report["split"] == "test" and report["seed"] == 3
    assert report["alphas"] == {"base": 1.0, "stm": 2.0, "ltm": 2.0, "sltm": 1.0}
    assert (setup / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ltm_memorises_the_long_past_and_is_timed(report):
    ltm = {r["context"]: r for r in report["ltm"]}
    assert list(ltm) == [40] and ltm[40]["s_per_stored_frame"] > 0  # L=12: nothing older than 8 frames + context
    assert ltm[40]["frames"] == 40 - 1 - 8 - 4 + 1
    prepare = {(r["method"], r["context"]): r["prepare_s"] for r in report["rows"]}
    assert prepare["+LTM", 40] > 0 and prepare["CoME", 40] > 0 and prepare["+STM", 40] == 0


def test_missing_checkpoints_skip_their_rows_with_a_note(setup, capsys):
    out = setup / "bare.json"
    assert run(setup, "--json", str(out), "--n-seq", "1", ckpt="bare") == 0
    got = json.loads(out.read_text())
    assert {r["method"] for r in got["rows"]} == {"Base", "+LTM", COPY_NEAREST}  # the LTM needs no weights
    assert set(got["skipped"]) == set(NAMES) - {"Base", "+LTM", COPY_NEAREST}
    assert all("missing" in why and "\n" not in why for why in got["skipped"].values())
    assert "skipped CoME: " in capsys.readouterr().out


def test_same_seed_same_numbers(setup):
    def numbers(seed):
        out = setup / f"s{seed}.json"
        assert run(setup, "--json", str(out), "--n-seq", "1", "--seed", str(seed)) == 0
        return {(r["method"], r["context"]): (r["psnr"], r["ssim"]) for r in json.loads(out.read_text())["rows"]}

    a, b, c = numbers(0), numbers(0), numbers(1)
    assert a == b
    assert a["CoME", 40] != c["CoME", 40] and a[COPY_NEAREST, 40] == c[COPY_NEAREST, 40]  # only samplers draw


def test_rows_selects_rows_with_the_same_numbers(setup, report):
    out = setup / "rows.json"
    assert run(setup, "--json", str(out), "--seed", "3", "--rows", "+LTM", "CoME") == 0
    got = {(r["method"], r["context"]): r["psnr"] for r in json.loads(out.read_text())["rows"]}
    full = {(r["method"], r["context"]): r["psnr"] for r in report["rows"]}
    assert set(got) == {(m, L) for m in ("+LTM", "CoME") for L in (12, 40)}
    assert all(got[k] == full[k] for k in got)


def test_resume_reuses_kept_sequences_and_refuses_other_settings(setup, report, capsys):
    kept, out = setup / "kept", setup / "resumed.json"
    assert run(setup, "--seed", "3", "--resume", str(kept), "--rows", "+LTM", "CoME") == 0
    assert sorted(p.name for p in kept.glob("*.pt")) == ["0.pt", "1.pt", "2.pt"]
    (kept / "1.pt").unlink()  # an interrupted run: one sequence still to do
    (kept / "2.pt").write_bytes(b"torn")
    assert run(setup, "--seed", "3", "--resume", str(kept), "--rows", "+LTM", "CoME") == 2
    assert "kept result" in capsys.readouterr().err
    (kept / "2.pt").unlink()
    assert run(setup, "--seed", "3", "--resume", str(kept), "--rows", "+LTM", "CoME", "--json", str(out)) == 0
    got = {(r["method"], r["context"]): r["psnr"] for r in json.loads(out.read_text())["rows"]}
    full = {(r["method"], r["context"]): r["psnr"] for r in report["rows"]}
    assert got == {k: full[k] for k in got} and len(got) == 4  # the same numbers as one uninterrupted run
    capsys.readouterr()
    assert run(setup, "--seed", "4", "--resume", str(kept), "--rows", "+LTM", "CoME") == 2
    err = capsys.readouterr().err
    assert "other settings (seed)" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--rows", "Bogus"], "unknown --rows"),
        (["--n-seq", "0"], "--n-seq"),
        (["--context", "2"], "--context"),
        (["--alpha", "stm"], "EXPERT=VALUE"),
        (["--alpha", "stm=two"], "not a number"),
        (["--ckpt", "/nonexistent/wm"], "does not exist"),
        (["--data", "/nonexistent/data"], "does not exist"),
        (["--split-dir", "/nonexistent/splits"], "memory_eval.json"),
    ],
)
def test_mistakes_print_one_line_and_return_2(setup, capsys, args, match):
    assert run(setup, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_copy_nearest_rollout_copies_the_retrieved_frame():
    memory = episode(T=60)
    q = query(memory, B=2)
    actions = q.action[:, None]  # (B, 1, 3): one step
    z = rollout(CopyNearest(4, COSINE), memory, actions, 1, torch.Generator().manual_seed(0))
    assert z.shape == (2, 1, 4, LATENT, LATENT)
    assert torch.allclose(z[:, 0], copy_nearest(memory, q), atol=1e-5)
