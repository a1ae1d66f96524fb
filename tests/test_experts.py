import copy
import json
import math

import numpy as np
import pytest
import torch
from helpers import LOOP_PERIOD, make_fake_dataset, smooth_path
from test_dit import perturb

from nav_come.compose import run_branches
from nav_come.core.checkpoint import CONFIG, CheckpointError, load_checkpoint, save_checkpoint
from nav_come.dit import DiT, dit_config
from nav_come.experts import (
    BaseExpert,
    FullExpert,
    LTMExpert,
    SpatialExpert,
    SSMExpert,
    STMExpert,
    copy_nearest,
    distance_alpha,
    load_expert,
    save_expert,
)
from nav_come.experts.common import QUERY_FEATURES, Condition, train_only_memory
from nav_come.experts.memory_dit import ssm_scan
from nav_come.lora import (
    LoRAConfig,
    adapter_disabled,
    adapter_mask,
    inject_lora,
    lora_parameters,
)
from nav_come.memory_bank import EpisodeMemory, FrameStore, MemoryBank, Query, RetrievalConfig

LATENT = 8  # latents 4×8×8
KINDS = ("stm", "ltm", "sltm", "full", "ssm")


def tiny_base(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return perturb(DiT(dit_config("tiny", latent_size=LATENT)), seed).eval()


def episode(T: int = 60, seed: int = 0, loop: bool = True) -> EpisodeMemory:
    """An episode whose latents are a fixed function of the pose (a revisit shows the same view)."""
    position, yaw = smooth_path(T, seed, loop)
    basis = torch.randn(4, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(seed))  # (F, c, h, w)
    x, y, a = (torch.from_numpy(v).float() for v in (position[:, 0], position[:, 1], yaw))
    features = torch.stack([a.cos(), a.sin(), (3 * x).sin(), (3 * y).cos()], 1)  # (T, F)
    latents = torch.einsum("tf,fchw->tchw", features, basis)
    return EpisodeMemory(latents, np.concatenate([position, yaw[:, None]], 1), spacing=0.25)


def query(memory: EpisodeMemory, B: int = 3, seed: int = 0, lag: int = 0) -> Query:
    g = torch.Generator().manual_seed(seed)
    action = torch.cat([1 + torch.rand(B, 2, generator=g), 0.3 * torch.randn(B, 1, generator=g)], 1)  # (B, 3)
    return Query(memory.context(4).expand(B, -1, -1, -1, -1), action, 1, memory.poses[memory.now][None], lag)


def noisy(B: int = 3, seed: int = 0, t: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 4, LATENT, LATENT, generator=g)
    return x, (torch.full((B,), t) if t is not None else 0.1 + 0.8 * torch.rand(B, generator=g))


def make_expert(kind: str, base: DiT):
    """An expert of ``kind`` started from ``base`` (small settings where they matter)."""
    if kind == "ltm":
        expert = LTMExpert.attach(copy.deepcopy(base), exclude_recent=8, batch_size=4)
    elif kind == "sltm":
        expert = SpatialExpert.from_base(base)
    else:
        cls = {"stm": STMExpert, "full": FullExpert, "ssm": SSMExpert}[kind]
        expert = cls.from_base(base, **({"window": 8} if kind == "stm" else {}))
    expert.bf16 = False
    return expert.eval()


def perturbed(kind: str, base: DiT, seed: int = 1):
    """An expert whose every weight (memory pathways included) has moved."""
    expert = make_expert(kind, base)
    perturb(expert.network, seed)
    return expert


def v_of(branch, x, t):
    return run_branches([branch], x, t)[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("contrast", ["null", "memory"])
def test_every_expert_starts_exactly_at_the_base(kind, contrast):
    base, memory = tiny_base(), episode()
    expert, reference = make_expert(kind, base), BaseExpert(base)
    if kind != "ltm":
        expert.config.contrast = contrast
    q, (x, t) = query(memory), noisy()
    cond_branch, partner = expert.branches(expert.condition(memory, q))
    base_cond, base_uncond = reference.branches(reference.condition(memory, q))
    assert torch.allclose(v_of(cond_branch, x, t), v_of(base_cond, x, t), atol=1e-6)
    same_as = base_uncond if contrast == "null" and kind != "ltm" else base_cond
    assert torch.allclose(v_of(partner, x, t), v_of(same_as, x, t), atol=1e-6)


def test_memory_dit_without_memory_is_the_base_exactly():
    base, memory = tiny_base(), episode()
    expert = make_expert("stm", base)
    with torch.no_grad():  # move only what memory adds
        for name, p in expert.network.named_parameters():
            if name.startswith(("memory_", "extra_cond")):
                p.add_(0.1 * torch.randn_like(p))
    q, (x, t) = query(memory), noisy()
    cond = expert.condition(memory, q)
    expert.config.contrast = "memory"
    with_memory, without = expert.branches(cond)
    base_v = v_of(BaseExpert(base).branches(BaseExpert(base).condition(memory, q))[0], x, t)
    assert torch.equal(v_of(without, x, t), base_v)
    assert not torch.allclose(v_of(with_memory, x, t), base_v, atol=1e-4)


# ---------------------------------------------------------------------- LoRA


def test_lora_with_zero_B_is_the_frozen_network_and_mask_matches_separate_calls():
    base = tiny_base()
    net = copy.deepcopy(base)
    names = inject_lora(net, LoRAConfig(rank=4))
    assert len(names) == 4 * base.config.depth and "blocks.0.attn.qkv" in names
    assert set(base.state_dict()) <= set(net.state_dict())  # base weights keep their names
    x, t = noisy(4)
    kw = {"context": torch.randn(4, 4, 4, LATENT, LATENT), "action": torch.randn(4, 3)}
    assert torch.equal(net(x, t, **kw), base(x, t, **kw))
    with torch.no_grad():
        for p in lora_parameters(net):
            p.add_(0.1 * torch.randn_like(p))
    adapted = net(x, t, **kw)
    assert not torch.allclose(adapted, base(x, t, **kw), atol=1e-4)
    mask = torch.tensor([True, False, False, True])
    with adapter_mask(net, mask):
        mixed = net(x, t, **kw)
    with adapter_disabled(net):
        plain = net(x, t, **kw)
    assert torch.allclose(plain, base(x, t, **kw), atol=1e-6)
    expected = torch.where(mask[:, None, None, None], adapted, plain)
    assert torch.allclose(mixed, expected, atol=1e-5)


def test_adapter_disabled_gives_the_base_after_training_the_adapter():
    base, memory = tiny_base(), episode(T=30)
    ltm = make_expert("ltm", base)
    ltm.config.lr = 1e-2
    report = ltm.memorize(memory)
    assert report.steps > 0
    x, t = noisy()
    kw = {"context": torch.randn(3, 4, 4, LATENT, LATENT), "action": torch.randn(3, 3)}
    assert not torch.allclose(ltm.network(x, t, **kw), base(x, t, **kw), atol=1e-4)
    with adapter_disabled(ltm.network):
        assert torch.allclose(ltm.network(x, t, **kw), base(x, t, **kw), atol=1e-6)
    assert all(p.requires_grad for p in ltm.network.parameters())  # flags restored after memorising


# ---------------------------------------------------------------------- LTM


def test_ltm_memorisation_lowers_its_loss_on_the_episode_and_reset_forgets():
    base, memory = tiny_base(), episode(T=48)
    ltm = make_expert("ltm", base)
    ltm.config.lr, ltm.config.steps_per_frame = 3e-3, 3.0
    limit = memory.now - ltm.config.exclude_recent
    before = ltm.loss_on(memory, limit, draws=8)
    report = ltm.memorize(memory)
    assert report.frames == limit - 4 + 1 and report.steps == math.ceil(3.0 * report.frames)
    assert report.s_per_frame > 0
    assert ltm.loss_on(memory, limit, draws=8) < 0.9 * before
    ltm.reset()
    assert ltm.loss_on(memory, limit, draws=8) == pytest.approx(before, rel=1e-5)


def test_ltm_update_streams_only_the_new_frames():
    base, full = tiny_base(), episode(T=40)
    memory = EpisodeMemory(full.latents[:30], full.poses[:30], full.spacing)
    ltm = make_expert("ltm", base)
    first = ltm.update(memory)
    assert first.frames == 30 - 1 - 8 - 4 + 1  # frames 4..21 (the newest 8 are left to the context and STM)
    assert ltm.update(memory).frames == 0  # nothing new
    memory.append(full.latents[30:], full.poses[30:])
    assert ltm.update(memory).frames == 10 and ltm.memorised == 39 - 8


# ---------------------------------------------------------------------- retrieval


def test_bank_returns_the_nearest_poses_within_the_limits():
    bank = MemoryBank(cell=1.0)
    poses = np.array([[0, 0, 0], [0.3, 0, 0], [0.1, 0, 0], [0.1, 0, 3.0], [5, 5, 0], [0.05, 0, 0]])
    bank.add(poses, np.arange(6))
    cfg = RetrievalConfig(k=3, radius=2.0, max_yaw=math.pi / 2)  # frame 3 faces away; frame 5 is too new
    idx, dist = bank.query(np.array([[0.0, 0.0, 0.1]]), cfg, max_index=4)
    assert idx.tolist() == [[0, 2, 1]]
    assert np.allclose(dist[0], [0.05, 0.1 + 0.05, 0.3 + 0.05])  # metres + 0.5 |dyaw|
    assert bank.query(np.array([[0.0, 0.0, 0.1]]), cfg, max_index=5)[0].tolist() == [[0, 5, 2]]
    idx, dist = bank.query(np.array([[5.0, 5.0, 0.0], [9.0, 9.0, 0.0]]), cfg, max_index=np.array([5, 5]))
    assert idx.tolist() == [[4, -1, -1], [-1, -1, -1]] and np.isinf(dist[1]).all()


def test_store_retrieval_never_crosses_episodes():
    poses = torch.zeros(10, 3, dtype=torch.float64)  # two episodes at the same place
    store = FrameStore(torch.zeros(10, 4, 2, 2), poses, torch.tensor([0, 5, 10]), 0.25)
    idx, _ = store.retrieve(torch.zeros(2, 3), torch.tensor([6, 3]), torch.tensor([1, 0]), RetrievalConfig(k=5))
    assert sorted(i for i in idx[0].tolist() if i >= 0) == [5, 6]
    assert sorted(i for i in idx[1].tolist() if i >= 0) == [0, 1, 2, 3]


def test_spatial_expert_retrieves_the_revisited_frame_outside_the_context():
    memory = episode(T=2 * LOOP_PERIOD + 10)
    expert = make_expert("sltm", tiny_base())
    q = query(memory, B=2)
    q.action = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # stay put; move one step
    for lag in (0, 2):
        q.lag = lag
        cond = expert.condition(memory, q)
        retrieved = cond.info["retrieved"]
        assert (retrieved <= q.memory_end(memory.now)).all()
        assert (memory.now - retrieved[0, 0]) % LOOP_PERIOD == 0  # the same pose, a lap or two earlier
        assert cond.info["distance"][0] < 1e-6
    nearest = copy_nearest(memory, q)
    assert torch.allclose(nearest[0], memory.latents[memory.now])  # the same view
    assert torch.allclose(nearest[1], memory.latents[retrieved[1, 0]])


def test_distance_alpha_interpolates_and_treats_no_retrieval_as_far():
    alpha = distance_alpha(near=2.0, far=1.0, d_near=0.5, d_far=1.5)
    cond = Condition({}, {"distance": torch.tensor([0.1, 1.0, 3.0, math.inf])})
    assert torch.allclose(alpha(cond), torch.tensor([2.0, 1.5, 1.0, 1.0]))


# ---------------------------------------------------------------------- conditions


@pytest.mark.parametrize("kind", ["stm", "full", "ssm", "sltm"])
def test_condition_and_training_input_shapes(kind):
    memory, expert = episode(T=50), make_expert(kind, tiny_base())
    cond = expert.condition(memory, query(memory, B=3))
    kw, D = cond.kwargs, expert.network.config.width
    if kind == "sltm":
        assert kw["extra_frames"].shape == (3, 2, 4, LATENT, LATENT) and kw["extra_cond"].shape == (3, 2 * 5 + 4)
    else:
        end = memory.now - 4  # frames 0..45 are memory
        tokens = {"stm": 4 * 16, "full": (end + 1) * 4, "ssm": 16}[kind]
        assert kw["memory"].shape == (1, 1 + tokens, 2 * D) and kw["memory_mask"].shape == (1, 1 + tokens)
        assert kw["extra_cond"].shape == (3, QUERY_FEATURES) and kw["memory_mask"].all()
    store = FrameStore(memory.latents, memory.poses, memory.starts, memory.spacing)
    newest = torch.tensor([3, 20, 40])
    raw = expert.training_inputs(store, newest, newest + 1, torch.Generator().manual_seed(0))
    if kind == "sltm":
        assert raw["extra_frames"].shape == (3, 2, 4, LATENT, LATENT)
    else:
        frames, valid = raw["memory_frames"], raw["memory_valid"]
        assert frames.shape[:2] == valid.shape and frames.shape[0] == 3 and raw["extra_cond"].shape == (3, 12)
        assert not valid[0].any()  # newest frame 3: nothing older than the context yet


def test_stm_window_holds_the_strided_frames_just_older_than_the_context():
    expert = STMExpert.from_base(tiny_base(), window=8, stride=2)
    idx, valid = expert.select(torch.tensor([0, 0]), torch.tensor([20, 5]), train=False)
    assert idx.tolist() == [[14, 16, 18, 20], [-1, 1, 3, 5]]
    assert valid.tolist() == [[True] * 4, [False, True, True, True]]


def test_ssm_state_streams_and_equals_the_full_scan():
    g = torch.Generator().manual_seed(0)
    u, gate = torch.randn(2, 7, 3, 5, generator=g), torch.randn(2, 7, 3, 5, generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    h = torch.zeros(2, 3, 5)
    for k in range(7):  # the recurrence, step by step
        a = torch.sigmoid(gate[:, k])
        h = a * h + (1 - a) * u[:, k]
    assert torch.allclose(ssm_scan(u, gate, mask), h, atol=1e-5)
    first = ssm_scan(u[:, :3], gate[:, :3], mask[:, :3])
    assert torch.allclose(ssm_scan(u[:, 3:], gate[:, 3:], mask[:, 3:], first), h, atol=1e-5)
    memory, expert = episode(T=40), perturbed("ssm", tiny_base())
    streamed = [expert.encode(memory, end)[0] for end in (20, 30)][-1]  # continues from the cached state
    expert.reset()
    assert torch.allclose(expert.encode(memory, 30)[0], streamed, atol=1e-5)


# ---------------------------------------------------------------------- persistence, training


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip_is_exact(kind, tmp_path):
    memory, expert = episode(), perturbed(kind, tiny_base())
    save_expert(tmp_path / kind, expert, {"steps": 1})
    loaded = load_expert(tmp_path / kind)
    loaded.bf16 = False
    assert type(loaded) is type(expert) and loaded.config == expert.config
    q, (x, t) = query(memory), noisy()
    pairs = zip(expert.branches(expert.condition(memory, q)), loaded.branches(loaded.condition(memory, q)), strict=True)
    for a, b in pairs:
        assert torch.equal(v_of(a, x, t), v_of(b, x, t))


def test_load_expert_refuses_other_kinds(tmp_path):
    save_checkpoint(tmp_path / "base", tiny_base(), "dit")
    with pytest.raises(CheckpointError, match="not a memory expert"):
        load_expert(tmp_path / "base")


@pytest.mark.parametrize("kind", ["stm", "sltm"])
def test_training_reaches_the_memory_pathways_and_can_freeze_the_base(kind):
    memory, expert = episode(T=50), make_expert(kind, tiny_base())
    base_channels = expert.network.config.latent_channels * 5
    trainable = train_only_memory(expert.network, base_channels)
    store = FrameStore(memory.latents, memory.poses, memory.starts, memory.spacing)
    g = torch.Generator().manual_seed(0)
    newest = torch.tensor([30, 35, 40, 44])
    batch = {
        "context": torch.stack([memory.latents[n - 3 : n + 1] for n in newest]),
        "target": memory.latents[newest + 1],
    }
    batch.update(action=torch.randn(4, 3), shift=torch.ones(4, dtype=torch.long))
    batch.update(expert.training_inputs(store, newest, newest + 1, g))
    expert.training_loss(batch, g, dropout=False).backward()
    grads = {n: p.grad for n, p in expert.network.named_parameters() if p.grad is not None}
    assert set(grads) == set(trainable)
    assert all(n.startswith(("memory_", "extra_cond", "patch_embed")) for n in grads)
    if kind == "sltm":
        assert grads["patch_embed.weight"][:, :base_channels].abs().max() == 0


def test_configs_name_the_bad_value():
    with pytest.raises(ValueError, match="'other'"):
        STMExpert.from_base(tiny_base(), contrast="other")
    with pytest.raises(ValueError, match="-3"):
        STMExpert.from_base(tiny_base(), window=-3)
    with pytest.raises(ValueError, match="k >= 1"):
        RetrievalConfig(k=0)


def test_train_expert_end_to_end(tmp_path):
    from nav_come.train import main as train_base
    from nav_come.train_expert import main

    data = tmp_path / "data"
    make_fake_dataset(data, {"train": 2, "val": 1}, T=60, H=32, loop=True)
    tiny = ["--preset", "tiny", "--image-size", "32", "--ae-steps", "2", "--ae-batch-size", "4", "--batch-size", "4"]
    assert (
        train_base(["--data", str(data), "--out", str(tmp_path / "wm"), "--steps", "2", "--val-every", "0", *tiny]) == 0
    )
    common = ["--base", str(tmp_path / "wm"), "--data", str(data), "--out", str(tmp_path / "x"), "--batch-size", "4"]
    common += ["--steps", "2", "--val-every", "1", "--threads", "1"]
    for kind in ("stm", "sltm", "full", "ssm"):
        extra = ["--train", "memory"] if kind == "sltm" else []
        assert main(["--expert", kind, *common, *extra]) == 0
        expert = load_expert(tmp_path / "x" / kind)
        meta = json.loads((tmp_path / "x" / kind / CONFIG).read_text())["metadata"]
        assert meta["steps"] == 2 and isinstance(meta["val_loss"], float) and 0.5 < meta["revisit_share"] < 1
        assert expert.kind == kind
    assert not list((tmp_path / "x" / "cache").glob("latents-train-*"))  # the base run's cache was reused
    sltm, (base, _) = load_expert(tmp_path / "x" / "sltm"), load_checkpoint(tmp_path / "wm" / "base", "dit")
    assert torch.equal(sltm.network.blocks[0].mlp.fc1.weight, base.blocks[0].mlp.fc1.weight)  # --train memory
    stm = load_expert(tmp_path / "x" / "stm")
    assert not torch.equal(stm.network.blocks[0].mlp.fc1.weight, base.blocks[0].mlp.fc1.weight)  # --train all
    bad = ["--expert", "stm", "--base", str(tmp_path / "nowhere"), "--data", str(data), "--out", str(tmp_path / "y")]
    assert main(bad) == 2
