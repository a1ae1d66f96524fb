import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import make_fake_dataset, make_fake_trajectory
from safetensors.torch import load_file, save_file

from nav_come.autoencoder import AEConfig, Autoencoder
from nav_come.core.checkpoint import CONFIG, WEIGHTS
from nav_come.core.data import read_trajectory, relative_poses, revisit_mask, write_split, write_trajectory
from nav_come.core.train_loop import LoopConfig, fit, setup_distributed
from nav_come.latents import LatentSet, LatentWindowDataset, blocked_steps, encode_split, taken_steps
from nav_come.train import main
from nav_come.world_model import WorldModel

TINY = ["--preset", "tiny", "--image-size", "32", "--ae-steps", "3", "--ae-batch-size", "4", "--batch-size", "4"]
TINY += ["--val-every", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sim")
    make_fake_dataset(root, {"train": 2, "test": 1}, T=24, H=32)
    return root


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["--data", str(data_dir), "--out", str(out), "--steps", "4", *TINY]) == 0
    return out


def metadata(path):
    return json.loads((path / CONFIG).read_text())["metadata"]


def test_end_to_end_writes_a_loadable_world_model(run):
    meta = metadata(run / "base")
    assert meta["steps"] == 4 and isinstance(meta["val_loss"], float)
    assert meta["schedule"] == {"logsnr_min": -10.0, "logsnr_max": 10.0}
    assert meta["command"].startswith("python -m nav_come.train --data")
    assert metadata(run / "ae")["steps"] == 3 and len(list((run / "cache").glob("latents-*"))) == 2
    wm = WorldModel.from_pretrained(run)
    assert wm.ae.config.scale_factor != 1.0  # estimated from the data
    out = wm.predict(torch.rand(1, 4, 3, 32, 32), torch.zeros(2, 3), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32)


def test_resume_continues_exactly_where_it_stopped(run, data_dir, tmp_path):
    ae_before = (run / "ae" / CONFIG).read_bytes()
    assert main(["--data", str(data_dir), "--out", str(run), "--steps", "6", *TINY]) == 0
    assert metadata(run / "base")["steps"] == 6
    assert (run / "ae" / CONFIG).read_bytes() == ae_before  # the finished AE stage is skipped
    assert len(list((run / "cache").glob("latents-*"))) == 2  # cached latents reused
    fresh = tmp_path / "fresh"
    args = ["--data", str(data_dir), "--out", str(fresh), "--stage", "dit", "--ae", str(run / "ae"), "--steps", "6"]
    assert main([*args, *TINY]) == 0
    resumed, straight = load_file(run / "base" / WEIGHTS), load_file(fresh / "base" / WEIGHTS)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_warm_start_begins_at_the_given_weights(run, data_dir, tmp_path):
    init = tmp_path / "init"
    shutil.copytree(run / "base", init)
    half = {k: v.half() for k, v in load_file(init / WEIGHTS).items()}  # weights stored in fp16 load too
    save_file(half, init / WEIGHTS)
    out = tmp_path / "warm"
    args = ["--data", str(data_dir), "--out", str(out), "--stage", "dit", "--ae", str(run / "ae"), "--init", str(init)]
    assert main([*args, "--steps", "1", "--lr", "1e-12", *TINY]) == 0  # ~no update: the export is the start
    warm = load_file(out / "base" / WEIGHTS)
    assert all(torch.allclose(warm[k], v.float(), atol=1e-6) for k, v in half.items())
    assert metadata(out / "base")["init"] == str(init)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"--data": "/nonexistent/data"}, "data folder /nonexistent/data does not exist"),
        ({"--preset": "huge"}, "unknown preset 'huge'"),
        ({"--stage": "dit", "--ae": "/nonexistent/ae"}, "checkpoint folder /nonexistent/ae does not exist"),
        ({"--spacing": "-1", "--stage": "dit"}, "--spacing must be a number of metres per step > 0"),
        (
            {"--split-dir": "/nonexistent/splits", "--stage": "dit"},
            "split file /nonexistent/splits/train/traj_names.txt does not exist",
        ),
    ],
)
def test_user_mistakes_print_one_line_and_return_2(run, data_dir, capsys, change, match):
    args = {"--data": str(data_dir), "--out": str(run), "--steps": "4", **change}
    argv = [*TINY, *(x for kv in args.items() for x in kv)]  # later options win in argparse
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in err[0]


def test_interrupt_saves_the_state_and_the_export(tmp_path):
    model, calls, exports = Autoencoder(AEConfig(image_size=32, widths=(8, 8))), [], []

    def loss_fn(m, g):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(1)
        return m.loss(torch.rand(2, 3, 32, 32, generator=g))

    loop = LoopConfig(steps=10, batch_size=2, lr=1e-3, bf16=False)
    with pytest.raises(KeyboardInterrupt):
        fit(model, "ae", loss_fn, loop, setup_distributed("cpu"), tmp_path / "last", lambda m, i: exports.append(i))
    assert torch.load(tmp_path / "last" / "trainer.pt", weights_only=True)["step"] == 2
    assert exports[-1]["steps"] == 2
    shutil.rmtree(tmp_path / "last")


def test_loop_config_errors_name_the_values():
    with pytest.raises(ValueError, match="-1"):
        LoopConfig(steps=-1, batch_size=2, lr=1e-3)


@pytest.fixture(scope="module")
def latents(data_dir, tmp_path_factory):
    torch.manual_seed(0)
    ae, cache = Autoencoder(AEConfig(image_size=32, widths=(8, 8, 8))), tmp_path_factory.mktemp("cache")
    return ae, cache, encode_split(ae, "key", data_dir, "train", cache, progress=False)


def test_latent_cache_holds_every_frame_once(latents, data_dir, monkeypatch):
    ae, cache, data = latents
    assert data.latents.shape == (48, 4, 8, 8) and data.latents.dtype == torch.float16
    tr = read_trajectory(data_dir / data.names[1], image_size=32)
    frames = torch.from_numpy(tr.frames).permute(0, 3, 1, 2)
    assert torch.allclose(data.latents[data.trajectory(1)].float(), ae.encode(frames), atol=2e-2)
    monkeypatch.setattr("nav_come.latents.read_trajectory", lambda *a, **k: pytest.fail("encoded twice"))
    again = encode_split(ae, "key", data_dir, "train", cache, progress=False)
    assert torch.equal(again.latents, data.latents) and again.names == data.names
    assert len(list(cache.iterdir())) == 1


def test_windows_match_the_data_conventions(latents, data_dir):
    _, _, data = latents
    windows = LatentWindowDataset(data, context=4, max_shift=3, spacing=0.25)
    assert len(windows) == 2 * (24 - 4)  # t = 3..22 in each trajectory
    tr = read_trajectory(data_dir / data.names[1], load_images=False)
    start = data.trajectory(1).start
    for i in range(len(windows)):
        t = int(windows.index[i]) - start
        if t < 0:
            continue
        item = windows[i]
        s = int(item["shift"])
        assert 1 <= s <= min(3, 23 - t)
        assert torch.equal(item["context"], data.latents[start + t - 3 : start + t + 1].float())
        assert torch.equal(item["target"], data.latents[start + t + s].float())
        expected = relative_poses(tr.position, tr.yaw, t, [s], 0.25)[0]
        assert torch.allclose(item["action"], torch.from_numpy(expected).float(), atol=1e-5)


def test_sample_batch_is_seeded_and_weights_revisits(tmp_path):
    torch.manual_seed(0)
    make_fake_trajectory(tmp_path / "loop", T=60, H=32, loop=True)
    write_split(tmp_path / "splits" / "train" / "traj_names.txt", ["loop"])
    ae = Autoencoder(AEConfig(image_size=32, widths=(8, 8, 8)))
    data = encode_split(ae, "key", tmp_path, "train", tmp_path / "cache", progress=False)
    plain = LatentWindowDataset(data, 4, 4, 0.25)
    a, b = (plain.sample_batch(16, torch.Generator().manual_seed(1)) for _ in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a) and a["context"].shape == (16, 4, 4, 8, 8)
    weighted = LatentWindowDataset(data, 4, 4, 0.25, revisit_weight=5.0)
    revisit = torch.from_numpy(revisit_mask(data.poses[:, :2].numpy(), data.poses[:, 2].numpy()))
    is_revisit = revisit[weighted.index + 1]  # (N,) whether each window's one-step target is a revisit
    assert 0 < is_revisit.float().mean() < 1  # the loop closes after a lap
    assert torch.equal(weighted.weights, torch.where(is_revisit, 5.0, 1.0).double())


def test_corrupt_resume_state_is_one_line(run, data_dir, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "last" / "base" / "trainer.pt").write_bytes(b"garbage")
    assert main(["--data", str(data_dir), "--out", str(copy), "--steps", "9", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "trainer.pt is corrupt" in err and "delete" in err


def test_a_killed_run_saves_its_resume_state(data_dir, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "nav_come.train", "--data", str(data_dir), "--out", str(out), "--steps", "100000",
            "--threads", "1", *TINY]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last" / "ae").exists() and time.time() < deadline:  # the AE stage is done: the DiT trains
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    state = torch.load(out / "last" / "base" / "trainer.pt", weights_only=False)
    assert state["step"] > 0


def test_cuda_placement_one_rank_per_gpu_or_shared():
    from nav_come.core.train_loop import cuda_placement

    assert [cuda_placement(r, 2, 2) for r in range(2)] == [(0, "nccl"), (1, "nccl")]
    assert [cuda_placement(r, 4, 1)[0] for r in range(4)] == [0, 0, 0, 0]
    assert cuda_placement(3, 4, 2) == (1, "gloo")


def test_windows_take_the_commanded_motion_where_it_is_recorded(latents):
    _, _, data = latents
    taken = torch.cat([taken_steps(data.poses[data.trajectory(i)]) for i in range(len(data.names))])
    as_taken = LatentWindowDataset(dataclasses.replace(data, commanded=taken), context=4, max_shift=3, spacing=0.25)
    plain = LatentWindowDataset(data, context=4, max_shift=3, spacing=0.25)
    items, shift = plain.sample_items(64, torch.Generator().manual_seed(0))
    assert torch.allclose(as_taken.gather(items, shift)["action"], plain.gather(items, shift)["action"], atol=1e-5)
    # a robot pressed against a wall: it does not move, but every step commands 0.2 m forward
    frozen = torch.zeros_like(data.poses)
    pushed = torch.zeros_like(taken)
    pushed[:, 0] = 0.2
    wall = LatentWindowDataset(dataclasses.replace(data, poses=frozen, commanded=pushed), 4, 3, 0.25)
    action = wall.gather(items, shift)["action"]
    assert torch.allclose(action[:, 0], 0.8 * shift.float()) and not action[:, 1:].any()


def test_latent_cache_keeps_the_commands(tmp_path):
    make_fake_trajectory(tmp_path / "a", T=12, H=32)
    tr = read_trajectory(tmp_path / "a")
    commanded = np.random.default_rng(0).normal(size=(12, 3))
    contact = np.arange(12) % 2 == 0
    write_trajectory(tmp_path / "a", tr.frames, tr.position, tr.yaw, commanded=commanded, contact=contact)
    make_fake_trajectory(tmp_path / "b", T=12, H=32)  # recorded without commands: it moved as commanded
    write_split(tmp_path / "splits" / "train" / "traj_names.txt", ["a", "b"])
    ae = Autoencoder(AEConfig(image_size=32, widths=(8, 8, 8)))
    data = encode_split(ae, "key", tmp_path, "train", tmp_path / "cache", progress=False)
    again = LatentSet.from_file(next((tmp_path / "cache").iterdir()))
    assert torch.equal(again.commanded, data.commanded) and again.commanded.shape == (24, 3)
    assert np.allclose(again.commanded[:12].numpy(), commanded)
    assert torch.allclose(again.commanded[12:], taken_steps(data.poses[12:]))


def test_contact_weight_upweights_windows_that_reach_a_blocked_step(latents):
    _, _, data = latents
    commanded = torch.cat([taken_steps(data.poses[data.trajectory(i)]) for i in range(len(data.names))])
    commanded[10, 0] += 0.3  # the step from frame 10 fell 0.3 m short of its command
    pushed = dataclasses.replace(data, commanded=commanded)
    assert blocked_steps(pushed).nonzero().flatten().tolist() == [10]
    windows = LatentWindowDataset(pushed, context=4, max_shift=3, spacing=0.25, contact_weight=5.0)
    heavy = windows.index[windows.weights == 5.0].tolist()
    assert heavy == [8, 9, 10]  # t + 1 .. t + 3 reaches the step from 10
    assert LatentWindowDataset(pushed, 4, 3, 0.25).weights is None
    with pytest.raises(ValueError, match="contact_weight"):
        LatentWindowDataset(pushed, 4, 3, 0.25, contact_weight=0.0)
