"""eval/contact.py: push and free windows, and its report."""

import json

import numpy as np
import pytest
from helpers import make_fake_dataset
from test_world_model import tiny_world_model

from eval.contact import HORIZON, find_windows, main
from nav_come.core.data import read_trajectory, write_trajectory


def test_windows_against_a_hand_made_contact_sequence():
    contact = np.zeros(20, bool)
    contact[8:14] = True  # the steps into frames 8..13 touched a wall
    w = find_windows(contact, horizon=4, context=4)
    assert w["onset"].tolist() == [7]  # t+1..t+4 inside 8..13, t itself free
    assert w["pressed"].tolist() == [8, 9]  # t..t+4 all inside
    assert w["free"].tolist() == [3, 13, 14, 15]  # t+1..t+4 all outside


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("contact")
    names = make_fake_dataset(root / "data", {"train": 1, "val": 2}, T=30, H=32)
    for name in names["val"]:
        tr = read_trajectory(root / "data" / name)
        contact = np.zeros(30, bool)
        contact[10:20] = True  # windows of every kind
        commanded = np.tile([0.2, 0.0, 0.0], (30, 1))
        write_trajectory(root / "data" / name, tr.frames, tr.position, tr.yaw, commanded=commanded, contact=contact)
    tiny_world_model().save(root / "wm")
    return root


def test_json_contract_and_copy_last_is_exact_on_a_frozen_view(setup, capsys):
    out = setup / "c.json"
    args = ["--data", str(setup / "data"), "--ckpt", str(setup / "wm"), "--n-samples", "4", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"rows", "data", "split", "seed", "precision", "windows"}
    assert report["windows"] == {"pressed": 4, "onset": 2, "free": 4}
    wm = str(setup / "wm")
    assert {(r["ckpt"], r["kind"], r["horizon"]) for r in report["rows"]} == {
        (c, k, h) for c in ("copy_last", "ae_recon", wm, f"{wm} (still)") for k in ("pressed", "onset", "free")
        for h in (1, HORIZON)}  # fmt: skip
    assert all(set(r) == {"ckpt", "kind", "horizon", "psnr", "psnr_se", "n"} for r in report["rows"])
    assert "PSNR" in capsys.readouterr().out
    again = setup / "d.json"
    assert main([*args[:-1], str(again)]) == 0
    assert json.loads(again.read_text()) == report  # seeded


def test_data_without_contact_is_one_line(setup, capsys):
    assert main(["--data", str(setup / "data"), "--ckpt", str(setup / "wm"), "--split", "train"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wall-push" in err[0]
