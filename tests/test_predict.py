import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_fake_dataset
from test_world_model import tiny_world_model

from eval.predict import HORIZONS, METHODS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    make_fake_dataset(root / "data", {"train": 1, "test": 1}, T=24, H=32)
    tiny_world_model().save(root / "wm")
    return root


def run(setup, *extra: str) -> int:
    args = ["--data", str(setup / "data"), "--ckpt", str(setup / "wm"), "--n-samples", "5", "--steps", "2"]
    return main([*args, "--batch-size", "3", *extra])


def test_json_contract_table_and_grid(setup, capsys):
    out_json, grid = setup / "p.json", setup / "grid.png"
    assert run(setup, "--json", str(out_json), "--grid", str(grid), "--seed", "3") == 0
    report = json.loads(out_json.read_text())
    assert set(report) == {"rows", "data", "split", "seed", "precision"}
    assert (report["data"], report["split"], report["seed"]) == (str(setup / "data"), "test", 3)
    assert {(r["method"], r["horizon"]) for r in report["rows"]} == {(m, h) for m in METHODS for h in HORIZONS}
    assert set(METHODS) == {"world_model", "copy_last", "ae_recon"}
    for row in report["rows"]:
        assert set(row) == {"method", "horizon", "psnr", "ssim", "lpips", "n"}
        assert isinstance(row["psnr"], float) and isinstance(row["ssim"], float)
        assert row["lpips"] is None and row["n"] == 5  # no LPIPS weights on this machine
    copy = {r["horizon"]: r["psnr"] for r in report["rows"] if r["method"] == "copy_last"}
    assert copy[1] > copy[8]  # the scene moves away from the last context frame
    table = capsys.readouterr().out
    assert "world_model" in table and "copy_last" in table and "PSNR" in table
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_numbers(setup):
    a, b = setup / "a.json", setup / "b.json"
    assert run(setup, "--json", str(a)) == 0 and run(setup, "--json", str(b)) == 0
    assert json.loads(a.read_text()) == json.loads(b.read_text())


@pytest.mark.parametrize(
    "args, match",
    [
        (["--ckpt", "/nonexistent/wm"], "does not exist"),
        (["--split-dir", "/nonexistent/splits"], "split file"),
        (["--n-samples", "0"], "--n-samples"),
    ],
)
def test_mistakes_print_one_line_and_return_2(setup, capsys, args, match):
    assert run(setup, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_runs_as_a_script_from_the_repo_root(setup):
    cmd = [sys.executable, "eval/predict.py", "--data", str(setup / "data"), "--ckpt", str(setup / "wm")]
    proc = subprocess.run([*cmd, "--n-samples", "2", "--steps", "1"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "ae_recon" in proc.stdout
