"""Memory that earns its cost: the spatial expert's recall path, relevance weights, the LTM's fit
and the revisit split of the memory table."""

import math

import numpy as np
import pytest
import torch
from test_compose import come, eps
from test_experts import LATENT, episode, noisy, query, tiny_base

from nav_come.compose import ComposedDenoiser, run_branches
from nav_come.diffusion import ddim_sample, diffusion_loss
from nav_come.dit import DiT
from nav_come.experts import LTMExpert, SpatialExpert, distance_alpha, fit_weight, load_expert, save_expert
from nav_come.experts.common import Condition
from nav_come.experts.spatial import RecallDiT, hard_sigmoid
from planners.config import parse_relevance, relevance_weights


def recall_expert(seed: int = 0) -> SpatialExpert:
    expert = SpatialExpert.from_base(tiny_base(seed), recall=True)
    expert.bf16 = False
    return expert.eval()


def recall_inputs(B: int = 4, seed: int = 0, found: bool = True) -> tuple[torch.Tensor, dict]:
    """A target x0 (B, c, h, w) and network arguments whose nearest retrieved frame IS the target."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(B, 4, LATENT, LATENT, generator=g)
    other = torch.randn(B, 1, 4, LATENT, LATENT, generator=g)
    features = torch.tensor([0.0, 0.0, 0.0, 1.0, float(found)])  # same pose, found
    extra_cond = torch.cat([features.expand(B, 5), torch.zeros(B, 5), torch.zeros(B, 4)], 1)
    kwargs = {"context": torch.randn(B, 4, 4, LATENT, LATENT, generator=g), "action": torch.randn(B, 3, generator=g),
              "extra_frames": torch.cat([x0[:, None], other], 1), "extra_cond": extra_cond}  # fmt: skip
    return x0, kwargs


def test_recall_path_leaves_the_network_alone_without_a_retrieval_or_condition():
    plain = SpatialExpert.from_base(tiny_base()).network.eval()
    expert = SpatialExpert.from_base(plain, recall=True).eval()  # the same weights plus the recall path
    _, kwargs = recall_inputs(found=False)
    x, t = noisy(B=4)
    with torch.no_grad():
        assert torch.equal(expert.network(x, t, **kwargs), plain(x, t, **kwargs))  # nothing found
        _, kwargs = recall_inputs()
        uncond = torch.ones(4, dtype=torch.bool)
        assert torch.equal(expert.network(x, t, **kwargs, uncond=uncond), plain(x, t, **kwargs, uncond=uncond))
        assert not torch.allclose(expert.network(x, t, **kwargs), plain(x, t, **kwargs))  # found: the gate acts


def test_open_gate_returns_the_recalled_latent_in_one_step():
    expert = recall_expert()
    with torch.no_grad():
        expert.network.memory_recall.sample[-1].bias.fill_(20.0)  # a sure gate: g = 1 everywhere
    x0, kwargs = recall_inputs()
    x_T = torch.randn(4, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = ddim_sample(lambda x, t, _: expert.network(x, t, **kwargs), x_T, 1, None)
    assert (pred - x0).abs().max() < 1e-3  # sigma_1 = 1 - 2e-5: the recalled latent, up to that


def test_hard_sigmoid_reaches_both_ends_and_is_monotone():
    z = torch.linspace(-10, 10, 101)
    g = hard_sigmoid(z)
    assert g[0] == 0 and g[-1] == 1 and bool((g.diff() >= 0).all())


def test_trained_gate_predicts_an_exact_retrieval_at_least_as_well_as_recalling_it():
    """A tiny trained fixture: every target's nearest retrieved frame is the target itself."""
    torch.manual_seed(0)
    expert = recall_expert()
    net = expert.network.train()
    opt = torch.optim.Adam(net.memory_recall.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    for step in range(150):
        x0, kwargs = recall_inputs(B=8, seed=step)
        loss = diffusion_loss(lambda x, t, kw: net(x, t, **kw), x0, kwargs, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x0, kwargs = recall_inputs(B=4, seed=999)
    x_T = torch.randn(4, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = ddim_sample(lambda x, t, _: net(x, t, **kwargs), x_T, 1, None)
        base_pred = ddim_sample(lambda x, t, _: DiT.forward(net, x, t, **kwargs), x_T, 1, None)  # no recall path
    recalled = kwargs["extra_frames"][:, 0]
    error = (pred - x0).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert bool((error <= (recalled - x0).pow(2).mean(dim=(1, 2, 3)).sqrt() + 1e-3).all())
    assert bool((error < 0.01 * (base_pred - x0).pow(2).mean(dim=(1, 2, 3)).sqrt()).all())


def test_recall_expert_round_trips_and_old_configs_load_without_it(tmp_path):
    expert = recall_expert()
    with torch.no_grad():
        expert.network.memory_recall.pixels[-1].weight.normal_()
    save_expert(tmp_path / "r", expert)
    loaded = load_expert(tmp_path / "r")
    assert isinstance(loaded.network, RecallDiT) and loaded.config.recall
    x, t = noisy(B=4)
    _, kwargs = recall_inputs()
    with torch.no_grad():
        assert torch.equal(loaded.network(x, t, **kwargs), expert.network(x, t, **kwargs))
    plain = SpatialExpert.from_base(tiny_base())
    save_expert(tmp_path / "p", plain)
    assert type(load_expert(tmp_path / "p").network) is not RecallDiT


def test_recall_from_a_trained_spatial_expert_keeps_its_weights():
    plain = SpatialExpert.from_base(tiny_base())
    with torch.no_grad():
        plain.network.patch_embed.weight.add_(0.1)
    recall = SpatialExpert.from_base(plain.network, plain.config.retrieval, recall=True)
    for name, value in plain.network.state_dict().items():
        assert torch.equal(recall.network.state_dict()[name], value)


# ---------------------------------------------------------------------- relevance weights


def test_unit_weights_are_the_plain_normalised_mixture_exactly():
    experts, memory, q = come()
    alphas = {"stm": 2.0, "ltm": 2.0, "sltm": 2.0}
    plain = ComposedDenoiser(experts, alphas, normalise=True, bf16=False)
    weighted = ComposedDenoiser(experts, alphas, {"sltm": 1.0, "ltm": lambda c: 1.0}, normalise=True, bf16=False)
    x, t = noisy()
    cond = plain.condition(memory, q)
    assert torch.equal(plain(x, t, cond), weighted(x, t, cond))


def test_relevance_weights_set_each_experts_share_of_the_mixture():
    experts, memory, q = come()
    names = {n: experts[n] for n in ("base", "sltm")}
    shares = torch.tensor([1.0, 3.0, 9.0])  # per sample
    composed = ComposedDenoiser(names, {"sltm": 2.0}, {"sltm": lambda c: shares}, normalise=True, x0_clip=None,
                                bf16=False)  # fmt: skip
    x, t = noisy()
    cond = composed.condition(memory, q)
    total = sum(torch.as_tensor(c) for _, c in composed.terms(cond))
    assert torch.allclose(total, torch.ones(3))
    base_c = names["base"].branches(cond["base"])[0]
    sltm_c, sltm_p = names["sltm"].branches(cond["sltm"])
    e_base, e_sltm, e_null = (eps(x, t, run_branches([b], x, t)[0]) for b in (base_c, sltm_c, sltm_p))
    w = shares[:, None, None, None]
    by_hand = (e_base + w * (2 * e_sltm - e_null)) / (1 + w)
    assert torch.allclose(eps(x, t, composed(x, t, cond)), by_hand, atol=1e-4)


def test_relevance_weights_are_monotone_in_relevance_and_bounded():
    sltm = distance_alpha(4.0, 1.0, 0.5, 2.0)
    d = torch.tensor([0.0, 0.4, 0.8, 1.2, 1.9, 2.5, math.inf])
    w = sltm(Condition({}, {"distance": d}))
    assert bool((w.diff() <= 0).all()) and w.max() == 4.0 and w.min() == 1.0
    ltm = fit_weight(3.0, 1.0, 0.1)
    gains = [-0.5, 0.0, 0.02, 0.05, 0.1, 0.4]
    w = [ltm(Condition({}, {"fit": g})) for g in gains]
    assert all(b >= a for a, b in zip(w, w[1:], strict=False)) and w[0] == 1.0 and w[-1] == 3.0
    assert set(relevance_weights({"sltm": 1.0, "ltm": 1.0})) == set()  # 1: a fixed share
    assert set(relevance_weights({"sltm": 4.0, "ltm": 2.0})) == {"sltm", "ltm"}


def test_bad_relevance_is_one_clear_error():
    assert parse_relevance(["sltm=3"]) == {"sltm": 3.0}
    for bad, words in ((["stm=2"], "EXPERT in"), (["sltm=x"], "not a number"), (["ltm=0"], "must be > 0")):
        with pytest.raises(ValueError, match=words):
            parse_relevance(bad)
    with pytest.raises(ValueError, match="not in the composition"):
        ComposedDenoiser(come()[0], 1.0, {"ssm": 2.0})


# ---------------------------------------------------------------------- the LTM's fit on the recent frames


def test_ltm_fit_gain_is_zero_before_memorising_and_leaves_the_memorisation_alone():
    memory = episode(T=60)
    ltm = LTMExpert.attach(tiny_base(), exclude_recent=8, batch_size=4, steps_per_frame=0.5)
    assert ltm.fit_gain(memory) == 0.0
    report = ltm.memorize(memory)
    assert report.fit_gain == ltm.fit == ltm.condition(memory, query(memory)).info["fit"]
    state = {k: v.clone() for k, v in ltm.network.state_dict().items()}
    generator = ltm.generator.get_state()
    assert ltm.fit_gain(memory) == report.fit_gain  # its own fixed draws
    assert torch.equal(ltm.generator.get_state(), generator)
    assert all(torch.equal(v, ltm.network.state_dict()[k]) for k, v in state.items())
    assert math.isfinite(report.fit_gain)


# ---------------------------------------------------------------------- the memory table's revisit split


def test_revisit_targets_need_an_old_frame_near_in_place_and_heading():
    from eval.memory_table import RECENT, revisit_targets

    T = RECENT + 3
    memory = np.zeros((T, 3))
    memory[:, 0] = np.arange(T) * 10.0  # frame j at x = 10 j; only frames 0..2 are old
    targets = np.array([[0.3, 0.0, 0.0], [0.3, 0.0, 1.0], [10.0, 0.4, 0.2], [40.0, 0.0, 0.0], [330.0, 0.0, 0.0]])
    assert revisit_targets(memory, targets).tolist() == [True, False, True, False, False]  # 330: recent frame 33
    assert not revisit_targets(memory[:RECENT], targets).any()


def test_memory_table_rows_split_scores_by_revisit():
    from eval.memory_table import summarise

    def scores(p, revisit, new):
        return {"psnr": p, "ssim": 0.5, "lpips": None, "s_per_frame": 0.1, "peak_mb": 1.0, "frames": 10,
                "prepare_s": 0.0, "revisit_psnr": revisit, "revisit_ssim": revisit and 0.6, "new_psnr": new,
                "new_ssim": new and 0.4}  # fmt: skip

    records = [{50: {"scores": {"Base": scores(20.0, 22.0, 18.0)}, "memorised": None, "shown": None}},
               {50: {"scores": {"Base": scores(21.0, None, 21.0)}, "memorised": None, "shown": None}}]  # fmt: skip
    row = summarise(records, [50], ["Base"], torch.device("cpu"))["rows"][0]
    assert row["revisit"]["psnr"] == 22.0 and row["revisit"]["n"] == 1
    assert row["non_revisit"]["psnr"] == pytest.approx(19.5) and row["non_revisit"]["n"] == 2


def test_train_expert_adds_the_recall_path_to_a_trained_spatial_expert(tmp_path, capsys):
    from helpers import make_fake_dataset

    from nav_come.train import main as train_base
    from nav_come.train_expert import main

    data = tmp_path / "data"
    make_fake_dataset(data, {"train": 2, "val": 1}, T=60, H=32, loop=True)
    tiny = ["--preset", "tiny", "--image-size", "32", "--ae-steps", "2", "--ae-batch-size", "4", "--batch-size", "4"]
    assert train_base(["--data", str(data), "--out", str(tmp_path / "wm"), "--steps", "2", "--val-every", "0",
                       *tiny]) == 0  # fmt: skip
    common = ["--base", str(tmp_path / "wm"), "--data", str(data), "--batch-size", "4", "--steps", "2",
              "--val-every", "0", "--threads", "1"]  # fmt: skip
    assert main(["--expert", "sltm", *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["--expert", "sltm", *common, "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "sltm"),
                 "--recall"]) == 0  # fmt: skip
    expert = load_expert(tmp_path / "b" / "sltm")
    assert isinstance(expert.network, RecallDiT) and expert.config.recall
    capsys.readouterr()
    assert main(["--expert", "stm", *common, "--out", str(tmp_path / "c"), "--recall"]) == 2
    assert main(["--expert", "stm", *common, "--out", str(tmp_path / "c"), "--init", str(tmp_path / "a" / "sltm")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--recall" in err[0] and "holds a sltm expert" in err[1]
