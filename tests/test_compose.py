import pytest
import torch
from test_experts import KINDS, LATENT, episode, noisy, perturbed, query, tiny_base

from nav_come.compose import Branch, ComposedDenoiser, ForwardStats, rollout, run_branches
from nav_come.diffusion import COSINE, ddim_sample
from nav_come.experts import BaseExpert, LTMExpert, distance_alpha
from nav_come.lora import lora_parameters


def come(seed: int = 0) -> tuple[dict, object, object]:
    """Base, STM, LTM (on the base's own network) and SLTM, all moved from their init."""
    base = tiny_base(seed)
    experts = {"base": BaseExpert(base)}
    for kind in ("stm", "sltm"):
        experts[kind] = perturbed(kind, base, seed + 1)
    experts["ltm"] = LTMExpert.attach(base, exclude_recent=8)
    with torch.no_grad():
        for p in lora_parameters(base):
            p.add_(0.05 * torch.randn_like(p))
    for e in experts.values():
        e.bf16 = False
    memory = episode(T=60)
    return experts, memory, query(memory, B=3)


def eps(x, t, v):
    return COSINE.eps_from_v(x, v, t)


def unbatched(composed: ComposedDenoiser, x, t, cond) -> torch.Tensor:
    """The composition computed branch by branch, one forward each, in ε-space."""
    total = sum(c * eps(x, t, run_branches([b], x, t)[0]) for b, c in _columns(composed.terms(cond), x))
    return COSINE.v_from_eps(x, total, t)


def _columns(terms, x):
    return [(b, torch.as_tensor(c, dtype=torch.float32).reshape(-1, *([1] * (x.ndim - 1)))) for b, c in terms]


@pytest.mark.parametrize("kind", ("base", *KINDS))
def test_one_expert_with_alpha_one_is_that_expert_exactly(kind):
    base, memory = tiny_base(), episode()
    expert = BaseExpert(base) if kind == "base" else perturbed(kind, base)
    expert.bf16 = False
    q, (x, t) = query(memory), noisy()
    cond = expert.condition(memory, q)
    composed = ComposedDenoiser({kind: expert}, 1.0, bf16=False)
    assert torch.equal(composed(x, t, {kind: cond}), expert(x, t, cond))
    if kind == "base":
        assert torch.equal(composed(x, t, {kind: cond}), base(x, t, **cond.kwargs))
    assert composed.last == ForwardStats(calls=1, forwards=1, samples=3, branches=1)


@pytest.mark.parametrize("kind", ["base", "stm", "ltm", "sltm"])
def test_alpha_above_one_is_classifier_free_guidance(kind):
    experts, memory, q = come()
    expert = experts[kind]
    x, t = noisy()
    cond = expert.condition(memory, q)
    conditional, partner = expert.branches(cond)
    by_hand = 2.5 * eps(x, t, run_branches([conditional], x, t)[0]) - 1.5 * eps(x, t, run_branches([partner], x, t)[0])
    composed = ComposedDenoiser({kind: expert}, 2.5, bf16=False)
    assert torch.allclose(eps(x, t, composed(x, t, {kind: cond})), by_hand, atol=1e-4)


def test_batched_composition_equals_unbatched_and_runs_one_forward_per_network():
    experts, memory, q = come()
    alphas = {"stm": 2.0, "ltm": 2.0, "sltm": distance_alpha(2.0)}
    composed = ComposedDenoiser(experts, alphas, x0_clip=None, bf16=False)
    x, t = noisy()
    cond = composed.condition(memory, q)
    assert torch.allclose(composed(x, t, cond), unbatched(composed, x, t, cond), atol=1e-4)
    # base+LTM share the base network (the LTM partner is the base's conditional branch): 3 networks
    assert composed.last == ForwardStats(calls=1, forwards=3, samples=3 * (2 + 2 + 2), branches=7)
    g = (torch.Generator().manual_seed(0), torch.Generator().manual_seed(0))
    x_T = torch.randn(3, 4, LATENT, LATENT)
    a = ddim_sample(composed, x_T, 3, cond, g[0])
    b = ddim_sample(lambda x, t, c: unbatched(composed, x, t, c), x_T, 3, cond, g[1])
    assert torch.allclose(a, b, atol=1e-3)


def test_contrastive_off_is_the_sum_of_conditional_eps():
    experts, memory, q = come()
    composed = ComposedDenoiser(experts, 3.0, contrastive=False, x0_clip=None, bf16=False)
    x, t = noisy()
    cond = composed.condition(memory, q)
    total = sum(eps(x, t, e(x, t, cond[name])) for name, e in experts.items())
    assert torch.allclose(eps(x, t, composed(x, t, cond)), total, atol=1e-4)
    assert all(c == 1.0 for _, c in composed.terms(cond)) and len(composed.terms(cond)) == len(experts)


def test_normalised_coefficients_sum_to_one_and_one_expert_is_unchanged():
    experts, memory, q = come()
    alphas = {"base": 1.0, "stm": 2.0, "sltm": distance_alpha(3.0)}
    composed = ComposedDenoiser(experts, alphas, normalise=True, bf16=False)
    cond = composed.condition(memory, q)
    total = sum(torch.as_tensor(c) for _, c in composed.terms(cond))
    assert torch.allclose(total, torch.ones(3))
    x, t = noisy()
    plain = ComposedDenoiser(experts, alphas, normalise=False, x0_clip=None, bf16=False)
    mean_eps = eps(x, t, plain(x, t, cond)) / len(experts)  # the geometric mixture: ε averaged
    assert torch.allclose(eps(x, t, composed(x, t, cond)), mean_eps, atol=1e-4)
    single = {"stm": experts["stm"]}
    a = ComposedDenoiser(single, 2.0, normalise=True, bf16=False)(x, t, {"stm": cond["stm"]})
    assert torch.equal(a, ComposedDenoiser(single, 2.0, bf16=False)(x, t, {"stm": cond["stm"]}))


def test_per_sample_alpha_equals_the_float_alpha_of_each_sample():
    experts, memory, q = come()
    sub = {"sltm": experts["sltm"]}
    x, t = noisy()
    cond = {"sltm": experts["sltm"].condition(memory, q)}
    per_sample = ComposedDenoiser(sub, {"sltm": lambda c: torch.tensor([1.0, 2.0, 3.0])}, bf16=False)(x, t, cond)
    for i, alpha in enumerate((1.0, 2.0, 3.0)):
        fixed = ComposedDenoiser(sub, alpha, bf16=False)(x, t, cond)
        assert torch.allclose(per_sample[i], fixed[i], atol=1e-5)


def test_x0_guard_keeps_the_product_finite_at_high_noise():
    experts, memory, q = come()
    x, t = noisy(t=1.0)
    for clip in (None, 4.0):
        composed = ComposedDenoiser(experts, 2.0, x0_clip=clip, bf16=False)
        x0 = COSINE.x0_from_v(x, composed(x, t, composed.condition(memory, q)), t)
        if clip is None:
            assert x0.abs().max() > 100  # ≈ -150 (K - 1) x_t
        else:
            assert x0.abs().max() <= clip + 1e-4
    normalised = ComposedDenoiser(experts, 2.0, normalise=True, bf16=False)
    x0 = COSINE.x0_from_v(x, normalised(x, t, normalised.condition(memory, q)), t)
    assert x0.abs().max() < 100  # S = 1: no explosion and no clipping needed


def test_rollout_of_a_composition_is_seeded_and_counts_its_forwards():
    experts, memory, _ = come()
    composed = ComposedDenoiser(experts, {"stm": 2.0, "sltm": 2.0}, bf16=False)
    actions = torch.tensor([[1.0, 0.0, 0.1]]).expand(2, 3, 3)  # (B, K, 3)
    a = rollout(composed, memory, actions, 2, torch.Generator().manual_seed(0))
    assert a.shape == (2, 3, 4, LATENT, LATENT) and torch.isfinite(a).all()
    assert composed.stats.calls == 3 * 2 and composed.stats.forwards == 3 * 2 * 3
    b = rollout(composed, memory, actions, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    alone = rollout(experts["base"], memory, actions, 2, torch.Generator().manual_seed(0))
    assert alone.shape == a.shape and not torch.allclose(alone, a)


def test_branch_batching_refuses_what_it_cannot_batch():
    base = tiny_base()
    x, t = noisy()
    kw = {"context": torch.randn(3, 4, 4, LATENT, LATENT), "action": torch.randn(3, 3)}
    with pytest.raises(ValueError, match="has no LoRA"):
        run_branches([Branch(base, kw, adapter=True)], x, t)
    with pytest.raises(ValueError, match="disagree"):
        run_branches([Branch(base, kw), Branch(base, {**kw, "uncond": True})], x, t)
    with pytest.raises(ValueError, match="batch 2"):
        run_branches([Branch(base, {**kw, "action": torch.randn(2, 3)})], x, t)


def test_bad_alphas_and_clips_are_refused():
    experts, _, _ = come()
    with pytest.raises(ValueError, match="'ssm'"):
        ComposedDenoiser(experts, {"ssm": 2.0})
    with pytest.raises(ValueError, match="x0_clip"):
        ComposedDenoiser(experts, 1.0, x0_clip=0.0)
    with pytest.raises(ValueError, match="at least one"):
        ComposedDenoiser({})
