"""Branch batching (one forward per network, duplicates dropped) against one forward per branch."""

import pytest
import torch
from test_compose import come
from test_experts import LATENT, noisy

from nav_come.compose import ComposedDenoiser, ForwardStats, rollout
from nav_come.diffusion import ddim_sample
from nav_come.experts import distance_alpha

SUBSETS = {  # the expert subsets of the ATE table, and every expert
    "nwm+stm": ("base", "stm"),
    "nwm+ltm": ("base", "ltm"),
    "come": ("base", "stm", "ltm", "sltm"),
}


def pair(names, **kw) -> tuple[ComposedDenoiser, ComposedDenoiser, object, object]:
    """The same composition batched and unbatched (no dedup either), and its memory and query."""
    experts, memory, q = come()
    sub = {n: experts[n] for n in names}
    alphas = {"stm": 2.0, "ltm": 2.0, "sltm": distance_alpha(2.0)}
    alphas = {n: a for n, a in alphas.items() if n in sub}
    make = [ComposedDenoiser(sub, alphas, bf16=False, batched=b, dedup=b, **kw) for b in (True, False)]
    return make[0], make[1], memory, q


@pytest.mark.parametrize("names", list(SUBSETS.values()), ids=list(SUBSETS))
@pytest.mark.parametrize("normalise", [False, True])
def test_batched_composition_equals_the_unbatched_one(names, normalise):
    batched, unbatched, memory, q = pair(names, normalise=normalise)
    x, t = noisy()
    cond = batched.condition(memory, q)
    assert torch.allclose(batched(x, t, cond), unbatched(x, t, cond), atol=1e-5)
    assert batched.last.branches == unbatched.last.branches == unbatched.last.forwards
    assert batched.last.forwards == len({id(e.network) for e in batched.experts.values()})  # one per network
    dedup_only = ComposedDenoiser(batched.experts, batched.alphas, bf16=False, batched=False, normalise=normalise)
    assert torch.allclose(dedup_only(x, t, cond), unbatched(x, t, cond), atol=1e-5)
    assert dedup_only.last.forwards == len({b.key() for b, _ in batched.terms(cond)})  # one per distinct branch
    x_T = torch.randn(3, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    a = ddim_sample(batched, x_T, 3, cond, torch.Generator().manual_seed(0), eta=1.0)
    b = ddim_sample(unbatched, x_T, 3, cond, torch.Generator().manual_seed(0), eta=1.0)
    assert torch.allclose(a, b, atol=1e-4)


def test_the_ltm_partner_is_the_base_conditional_branch_and_runs_once():
    batched, unbatched, memory, q = pair(SUBSETS["nwm+ltm"])
    x, t = noisy()
    cond = batched.condition(memory, q)
    (base_cond, _), (ltm, ltm_partner) = (e.branches(cond[n]) for n, e in batched.experts.items())
    assert ltm_partner.key() == base_cond.key() and ltm.key() != base_cond.key()
    assert torch.allclose(batched(x, t, cond), unbatched(x, t, cond), atol=1e-5)
    # base (alpha 1: no partner) + LTM + its partner: 3 branches; batched, the partner is the base's branch
    assert batched.last == ForwardStats(calls=1, forwards=1, samples=2 * 3, branches=3)
    assert unbatched.last == ForwardStats(calls=1, forwards=3, samples=3 * 3, branches=3)


def test_batched_and_unbatched_rollouts_agree_under_one_seed():
    batched, unbatched, memory, _ = pair(SUBSETS["come"])
    actions = torch.tensor([[1.0, 0.0, 0.1], [0.5, 0.2, -0.1]])[:, None].expand(2, 3, 3)  # (B, K, 3)
    a = rollout(batched, memory, actions, 2, torch.Generator().manual_seed(0), sampler="ddpm")
    b = rollout(unbatched, memory, actions, 2, torch.Generator().manual_seed(0), sampler="ddpm")
    assert torch.allclose(a, b, atol=1e-4)
    calls = 3 * 2  # K steps × sampler steps
    assert batched.stats.calls == unbatched.stats.calls == calls
    assert batched.stats.forwards == 3 * calls and unbatched.stats.forwards == 7 * calls
    assert batched.stats.branches == unbatched.stats.branches == 7 * calls


@pytest.mark.parametrize("max_batch, forwards", [(3, 2), (5, 2), (6, 1), (None, 1)])
def test_max_batch_splits_a_network_forward_without_changing_the_output(max_batch, forwards):
    batched, unbatched, memory, q = pair(SUBSETS["nwm+ltm"])  # batch 3; base and LTM share one network
    capped = ComposedDenoiser(batched.experts, batched.alphas, bf16=False, max_batch=max_batch)
    x, t = noisy()
    cond = batched.condition(memory, q)
    assert torch.allclose(capped(x, t, cond), unbatched(x, t, cond), atol=1e-5)
    assert capped.last == ForwardStats(calls=1, forwards=forwards, samples=2 * 3, branches=3)
