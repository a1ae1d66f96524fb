"""Progressive distillation (``nav_come.distill``): its target, objective, checkpoints, CLI and planners."""

import copy
import json

import pytest
import torch
from helpers import make_fake_dataset
from test_dit import perturb
from test_experts import episode, make_expert, tiny_base
from test_memory_eval import memory_data, tiny_memory_ckpt

from eval import bench
from nav_come.core.checkpoint import CONFIG, WEIGHTS, CheckpointError, checkpoint_hash, load_checkpoint, save_checkpoint
from nav_come.diffusion import ddim_sample, diffusion_loss
from nav_come.distill import (
    DISTILLED_DIR,
    conditioned,
    copy_ltm_settings,
    distillation_target,
    distilled_dir,
    distilled_steps,
    distilled_world_model,
    load_distilled,
    main,
    network_of,
    round_loss,
    sampler_times,
    save_distilled,
)
from nav_come.dit import DiT, dit_training_loss
from nav_come.experts import TRAINED, BaseExpert, STMExpert, load_expert, save_expert
from nav_come.memory_bank import FrameStore
from planners.methods import MethodUnavailable, load_method

NAMES = ("base", *TRAINED)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def training_case(name: str, dropout: float = 0.15):
    """A tiny model of ``name`` (memory pathways moved) and a training batch of it, with the given
    condition, action and memory dropout probabilities."""
    model = tiny_base()
    if name != "base":
        model = make_expert(name, model)
        perturb(model.network, 1)
        drop = "retrieval_dropout" if name == "sltm" else "memory_dropout"
        setattr(model.config, drop, dropout)
    network_of(model).config.context_dropout = network_of(model).config.action_dropout = dropout
    memory = episode(T=50)
    store = FrameStore(memory.latents, memory.poses, memory.starts, memory.spacing)
    newest = torch.tensor([30, 33, 35, 38, 40, 42, 44, 46])
    batch = {"context": torch.stack([memory.latents[n - 3 : n + 1] for n in newest]),
             "target": memory.latents[newest + 1], "action": torch.randn(8, 3, generator=gen(2)),
             "shift": torch.ones(8, dtype=torch.long)}  # fmt: skip
    if name != "base":
        batch.update(model.training_inputs(store, newest, newest + 1, gen(3)))
    return model, batch


def own_loss(model, batch, g, dropout):
    """The model's own training objective."""
    if isinstance(model, DiT):
        return dit_training_loss(model, batch, g, dropout=dropout)
    return model.training_loss(batch, g, dropout)


# ---------------------------------------------------------------------- the objective


@pytest.mark.parametrize("teacher_steps, student_steps", [(2, 1), (4, 2), (4, 1), (6, 2)])
def test_a_student_on_its_target_samples_what_the_teacher_samples(teacher_steps, student_steps):
    """The target, checked against the sampler itself: a student that always outputs it, run by
    ddim_sample at M steps, returns what the teacher returns at N steps (for 2 -> 1: the x0 of two
    teacher DDIM steps)."""
    model, batch = training_case("base")
    kw = {k: batch[k] for k in ("context", "action", "shift")}

    def teacher(x, t, _=None):
        return model(x, t, **kw)

    grid = sampler_times(student_steps)

    def oracle(x, t, _):
        j = (grid == t[0]).nonzero()[0, 0].expand(len(x))  # ddim_sample visits exactly this grid
        return distillation_target(teacher, x, j, teacher_steps, student_steps)

    x_T = torch.randn(batch["target"].shape, generator=gen(4))
    with torch.no_grad():
        ours, theirs = ddim_sample(oracle, x_T, student_steps, None), ddim_sample(teacher, x_T, teacher_steps, None)
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert not torch.allclose(ddim_sample(teacher, x_T, student_steps, None), theirs, atol=1e-2)  # steps matter


@pytest.mark.parametrize("name", NAMES)
def test_the_condition_and_its_dropout_are_the_models_own(name):
    model, batch = training_case(name, dropout=0.5)
    for dropout in (True, False):
        g = gen(5)
        call = conditioned(model, batch, g, dropout)
        ours = diffusion_loss(lambda x, t, _, call=call: call(network_of(model), x, t), batch["target"], None, g)
        assert torch.equal(ours, own_loss(model, batch, gen(5), dropout))


def test_a_round_lowers_the_distillation_loss():
    teacher, batch = training_case("base")
    teacher.requires_grad_(False)
    student = copy.deepcopy(teacher).requires_grad_(True)
    opt = torch.optim.Adam(student.parameters(), lr=3e-3)

    def fixed_draws():  # other noise and times than training's
        with torch.no_grad():
            return sum(round_loss(student, teacher, batch, 2, 1, gen(100 + i), dropout=False) for i in range(4)) / 4

    before = fixed_draws()
    for step in range(20):
        loss = round_loss(student, teacher, batch, 2, 1, gen(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert fixed_draws() < 0.5 * before


# ---------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", NAMES)
def test_a_distilled_checkpoint_round_trips(tmp_path, name):
    model, batch = training_case(name)
    save_distilled(tmp_path, name, model, 1, {"teacher": "somewhere"})
    loaded, steps = load_distilled(tmp_path, name, 1)
    assert steps == 1 and distilled_steps(tmp_path) == [1]
    assert type(loaded) is (BaseExpert if name == "base" else type(model))
    mine, theirs = network_of(model).state_dict(), loaded.network.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        out = [conditioned(model, batch, gen(6))(net, batch["target"], torch.full((8,), 0.5))
               for net in (network_of(model), loaded.network)]  # fmt: skip
    assert torch.equal(*out)
    meta = json.loads((distilled_dir(tmp_path, 1) / name / CONFIG).read_text())["metadata"]
    assert meta == {"teacher": "somewhere", "sampler_steps": 1}
    (tmp_path / "2step").mkdir()
    (distilled_dir(tmp_path, 1) / name).rename(distilled_dir(tmp_path, 2) / name)
    with pytest.raises(CheckpointError, match="distilled for 1 sampler steps, not 2"):
        load_distilled(tmp_path, name, 2)


# ---------------------------------------------------------------------- the CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny world model with an STM beside it, trained for 2 steps on a tiny looping dataset."""
    from nav_come.train import main as train_base

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    make_fake_dataset(root / "data", {"train": 2, "val": 1}, T=60, H=32, loop=True)
    tiny = ["--preset", "tiny", "--image-size", "32", "--ae-steps", "2", "--ae-batch-size", "4", "--batch-size", "4"]
    args = ["--data", str(root / "data"), "--out", str(root / "wm"), "--steps", "2", "--val-every", "0", *tiny]
    assert train_base(args) == 0
    base, meta = load_checkpoint(root / "wm" / "base", "dit")
    save_expert(root / "wm" / "stm", STMExpert.from_base(base, window=8), {"spacing": meta["spacing"]})
    return root


def distil(root, *extra):
    common = ["--ckpt", str(root / "wm"), "--data", str(root / "data"), "--out", str(root / "out")]
    return main([*common, "--steps-per-round", "2", "--batch-size", "4", "--val-every", "1", "--threads", "1", *extra])


def metadata(folder):
    return json.loads((folder / CONFIG).read_text())["metadata"]


def test_the_cli_writes_every_round_and_resumes(trained):
    out = trained / "out"
    assert distil(trained, "--expert", "base") == 0
    for k in (2, 1):
        assert {p.name for p in (distilled_dir(out, k) / "base").iterdir()} == {CONFIG, WEIGHTS}
    first, last = metadata(out / "2step" / "base"), metadata(out / "1step" / "base")
    assert (first["teacher"], first["teacher_steps"]) == (str(trained / "wm" / "base"), 4)
    assert first["teacher_hash"] == first["original_hash"] == checkpoint_hash(trained / "wm" / "base")
    assert (last["teacher"], last["teacher_steps"], last["sampler_steps"]) == (str(out / "2step" / "base"), 2, 1)
    assert last["teacher_hash"] == checkpoint_hash(out / "2step" / "base")
    assert last["rounds"] == [4, 2, 1] and last["steps"] == 2 and isinstance(last["val_loss"], float)
    assert last["command"].startswith("python -m nav_come.distill --ckpt") and last["torch"] == torch.__version__
    assert "CPUs" in last["machine"] and last["schedule"] == metadata(trained / "wm" / "base")["schedule"]
    wm = distilled_world_model(trained / "wm", out, 1)
    assert wm.sampler_steps == 1 and wm.predict(torch.rand(1, 4, 3, 32, 32), torch.zeros(2, 3)).shape == (2, 3, 32, 32)
    before = checkpoint_hash(out / "1step" / "base")
    assert distil(trained, "--expert", "base") == 0  # done: nothing changes
    assert checkpoint_hash(out / "1step" / "base") == before
    assert distil(trained, "--expert", "stm", "--from-steps", "2", "--to-steps", "1") == 0
    assert load_expert(out / "1step" / "stm").kind == "stm" and not (out / "2step" / "stm").exists()
    assert metadata(out / "1step" / "stm")["spacing"] == 0.25


@pytest.mark.parametrize("extra, match", [
    (["--expert", "base", "--rounds", "4", "3"], "multiple of the next"),
    (["--expert", "base", "--from-steps", "6", "--to-steps", "1"], "does not halve"),
    (["--expert", "sltm"], "wm/sltm does not exist"),
    (["--expert", "base", "--rounds", "2", "1"], "from another teacher"),
])  # fmt: skip
def test_mistakes_print_one_line_and_return_2(trained, capsys, extra, match):
    if "another teacher" in match:  # the 2 -> 1 round resumes a student of the 2-step student, not of the base
        assert distil(trained, "--expert", "base") == 0
        capsys.readouterr()
    assert distil(trained, *extra) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and "\n" not in err and err.startswith("nav_come.distill: error:")


# ---------------------------------------------------------------------- planners and the benchmark


def test_planners_and_the_bench_use_the_distilled_networks(tmp_path):
    ckpt = tiny_memory_ckpt(tmp_path / "ckpt", experts=("stm",))
    root = ckpt / DISTILLED_DIR
    base, _ = load_checkpoint(ckpt / "base", "dit")
    save_distilled(root, "base", perturb(base, 7), 1, {"original_hash": checkpoint_hash(ckpt / "base")})
    save_distilled(root, "stm", load_expert(ckpt / "stm"), 1, {"spacing": 0.25})
    copy_ltm_settings(ckpt, root, 1)
    planner = load_method("nwm+ltm", ckpt, distilled=root, sampler_steps=1)
    assert planner.world_model.sampler_steps == 1 and planner.world_model.dit is planner.denoiser.experts["ltm"].network
    assert torch.equal(planner.world_model.dit.final.linear.weight, base.final.linear.weight)  # the distilled base
    assert planner.denoiser.experts["ltm"].config.exclude_recent == 8  # CKPT/ltm's settings
    with pytest.raises(MethodUnavailable, match="2-step distilled base .* nav_come.distill --expert base"):
        load_method("nwm", ckpt, distilled=root, sampler_steps=2)
    save_checkpoint(ckpt / "base", perturb(base, 8), "dit")  # the base changed since: distil again
    with pytest.raises(CheckpointError, match="another base"):
        load_method("nwm", ckpt, distilled=root, sampler_steps=1)


def test_the_bench_adds_distilled_rows(tmp_path):
    ckpt = tiny_memory_ckpt(tmp_path / "ckpt", experts=("stm",))
    root = ckpt / DISTILLED_DIR
    save_distilled(root, "base", perturb(load_checkpoint(ckpt / "base", "dit")[0], 7), 1)
    save_distilled(root, "stm", load_expert(ckpt / "stm"), 1)
    out = tmp_path / "plan.json"
    args = ["plan", "--ckpt", str(ckpt), "--methods", "NWM", "NWM+STM", "--steps", "2", "--plans", "1",
            "--candidates", "2", "--rollouts", "1", "--threads", "1", "--precision", "fp32",
            "--json", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    rows = [(r["method"], r["sampler"], r["sampler_steps"]) for r in report["rows"]]
    assert rows == [(m, s, k) for m in ("NWM", "NWM+STM") for s, k in (("multistep", 2), ("distilled", 1))]
    assert report["skipped"] == {"NWM distilled 2-step": "no distilled checkpoint",
                                 "NWM+STM distilled 2-step": "no distilled checkpoint"}  # fmt: skip
    nwm = {r["sampler"]: r for r in report["rows"] if r["method"] == "NWM"}
    assert nwm["distilled"]["forwards_per_plan"] == nwm["multistep"]["forwards_per_plan"] // 2  # 8 steps × 1 vs × 2


def quality(report: dict) -> list[dict]:
    """The rows of an eval report without their timings."""
    timing = {"s_per_frame", "peak_mb", "prepare_s", "s_per_plan", "s_per_observe"}
    return [{k: v for k, v in row.items() if k not in timing} for row in report["rows"]]


def test_the_eval_scripts_sample_with_the_distilled_networks(tmp_path):
    """A distilled base equal to the original gives the multi-step sampler's numbers at that step count;
    a distilled STM that differs changes the rows that compose it."""
    from eval import ate_rpe, predict

    memory_data(tmp_path / "data")
    ckpt = tiny_memory_ckpt(tmp_path / "ckpt", experts=("stm",))
    root = tmp_path / "distilled"
    save_distilled(root, "base", load_checkpoint(ckpt / "base", "dit")[0], 1)
    save_distilled(root, "stm", perturb(load_expert(ckpt / "stm"), 9), 1, {"spacing": 0.25})
    copy_ltm_settings(ckpt, root, 1)
    data, common = str(tmp_path / "data"), ["--ckpt", str(ckpt), "--threads", "1"]
    runs = {
        "windows": (predict.main, ["--data", data, "--n-samples", "3", "--batch-size", "3", *common]),
        "memory": (predict.main, ["--memory", "--data", data, "--n-seq", "1", "--context", "12", "--rows", "Base",
                                  "+STM", "+LTM", *common]),
        "ate": (ate_rpe.main, ["--data", data, "--methods", "NWM", "NWM+STM", "--n-samples", "1", "--seeds", "0",
                               "--candidates", "4", "--top-k", "2", "--rollouts", "1", "--history", "20", *common]),
    }  # fmt: skip
    for name, (script, args) in runs.items():
        outs = [tmp_path / f"{name}-{k}.json" for k in ("multistep", "distilled")]
        assert script([*args, "--steps", "1", "--json", str(outs[0])]) == 0
        assert script([*args, "--distilled", str(root), "--json", str(outs[1])]) == 0  # --steps: the fewest, 1
        multistep, distilled = (json.loads(p.read_text()) for p in outs)
        about = distilled["protocol"] if name == "ate" else distilled  # where the sampler is recorded
        assert (about["distilled"], about["sampler_steps"]) == (str(root), 1)
        same = [a == b for a, b in zip(quality(distilled), quality(multistep), strict=True)]
        assert same == ["STM" not in r["method"] for r in multistep["rows"]] and len(same) >= 2
    assert predict.main([*runs["windows"][1], "--distilled", str(root), "--steps", "2"]) == 2
