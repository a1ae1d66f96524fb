"""What a navigation method is, and what a planner is built with.

:data:`REGISTRY` lists every method once (its command-line key, its table label, its kind and
the memory experts it composes); every CLI reads it. :class:`PlanConfig` holds everything a
planner is built with besides its checkpoints, and :func:`add_plan_args` /
:func:`plan_config_from_args` give the CLIs one shared argument group generated from it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from pathlib import Path

from nav_come.core.data.config import DataConfig
from nav_come.core.precision import INFERENCE_PRECISIONS, PLAN_PRECISION_HELP
from planners import cem
from planners.cost import DISTANCES, PROGRESS_REDUCTIONS

RANKED_SAMPLES = 32  # NoMaD trajectories the world model ranks per plan (nomad+nwm, nomad+come)
# About 2 for the memory experts (docs/design.md); 1 for the spatial expert since it has its recall path:
# on the validation worlds, with relevance weights, guidance only overshot its sharp recalled frame
# (docs/results.md, "Memory that earns its cost": +SLTM 22.00 dB at 512 frames with alpha 1 against 21.47
# with alpha 2, and 18.88 against 17.79 at 50 frames).
DEFAULT_ALPHAS = {"base": 1.0, "stm": 2.0, "ltm": 2.0, "sltm": 1.0}
# With ONE sampler step the contrastive term has no later step to correct its extrapolation: on the
# validation worlds (docs/results.md, "Memory experts") alpha 2 put +STM, +SLTM and CoME 5-6 dB BELOW the base
# at 1 DDIM step, alpha 1 put every composition above it. ``default_alphas`` picks by the step count.
ONE_STEP_ALPHA = 1.0
# Composed coefficients scaled to sum to 1 (a geometric mixture). Chosen on the validation worlds
# (docs/results.md, "Memory experts"): the plain sum of four experts' scores at 5 DDIM steps fell 4.6 dB
# below the base, the normalised one rose 0.6 dB above it.
DEFAULT_NORMALISE = True
# The world model's sampler steps per prediction when a caller names none. Chosen on the validation
# worlds (docs/results.md, "Planning cost"): NWM's ATE did not improve with more DDIM steps (1.383 at 1 step,
# 1.353 at 2, 20 samples), prediction PSNR is highest at 1, and a plan's time grows with the steps.
DEFAULT_SAMPLER_STEPS = 1
# Relevance weights (nav_come.compose, "Relevance weights"): an expert's share of the mixture when its
# memory is most relevant to the prediction, against 1 when least: the SLTM by its retrieval distance
# (RELEVANCE_NEAR_FAR, metres + 0.5 rad; experts.spatial.distance_alpha), the LTM by how much its adapter
# lowers the loss on the recent frames (full weight at a RELEVANCE_FIT relative gain; experts.ltm.fit_weight).
# Chosen on the validation worlds (docs/results.md, "Memory that earns its cost").
DEFAULT_RELEVANCE = {"sltm": 16.0, "ltm": 1.0}
RELEVANCE_NEAR_FAR = (0.25, 0.75)  # metres + 0.5 rad
RELEVANCE_FIT = 0.1
SEARCHES = ("paper", "seeded")  # NWM's CEM from its prior; CEM seeded with the policies' proposals


@dataclass(frozen=True)
class Method:
    """One navigation method. key: its name on the command line (``plan.py --method``); label: its
    row in the tables (``eval/ate_rpe.py --methods``); kind: "cem" (a world model searched with
    CEM), "policy" or "ranking" (the world model ranks a policy's samples); experts: the memory
    experts composed with the base; table: a default row of ``eval/ate_rpe.py``; search: the search
    a "cem" method always uses (None: ``PlanConfig.search``); base: the base expert joins the
    composition (False: the experts alone, as the distilled CoME student)."""

    key: str
    label: str
    kind: str
    experts: tuple[str, ...] = ()
    table: bool = True
    search: str | None = None
    base: bool = True


# CoME's memory experts. The STM is left out: on the validation worlds it lowered every composition it
# joined (docs/results.md, "Memory that earns its cost"); NWM+STM keeps it as its own method.
COME_EXPERTS = ("ltm", "sltm")
REGISTRY = {m.key: m for m in (
    Method("gnm", "GNM", "policy"),
    Method("nomad", "NoMaD", "policy"),
    Method("nwm", "NWM", "cem"),
    Method("nwm-paper", "NWM (paper protocol)", "cem", search="paper"),
    Method("come", "CoME", "cem", COME_EXPERTS, table=False),  # the composition the student distils
    Method("come-student", "CoME (student)", "cem", ("student",), base=False),  # planners.student
    Method("nwm+stm", "NWM+STM", "cem", ("stm",)),
    Method("nwm+ltm", "NWM+LTM", "cem", ("ltm",)),
    Method("nomad+nwm", "NoMaD+NWM", "ranking", table=False),
    Method("nomad+come", "NoMaD+CoME", "ranking", COME_EXPERTS, table=False),
)}  # fmt: skip
METHODS = tuple(REGISTRY)
BY_LABEL = {m.label: m for m in REGISTRY.values()}
TABLE = [m.label for m in REGISTRY.values() if m.table]  # the default rows of eval/ate_rpe.py
CEM_LABELS = [m.label for m in REGISTRY.values() if m.kind == "cem"]  # what eval.bench plan can time
MEMORY_METHODS = {m.key: m.experts for m in REGISTRY.values() if m.kind == "cem" and m.experts}
LABELS = {m.key: m.label for m in REGISTRY.values()}


def method(name: str) -> Method:
    """The method of a key ("come") or a label ("CoME"); ValueError lists the known ones."""
    found = REGISTRY.get(name.lower()) or BY_LABEL.get(name)
    if found is None:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)} "
                         f"(or a table label: {', '.join(BY_LABEL)})")  # fmt: skip
    return found


def _flag(default, flag: str, help: str, **kwargs):
    """A :class:`PlanConfig` field that :func:`add_plan_args` turns into the command-line flag ``flag``."""
    return field(default=default, metadata={"flag": flag, "help": help, **kwargs})


@dataclass
class PlanConfig:
    """Everything a planner is built with besides its checkpoints (:func:`load_method`).

    cem_config: the CEM search (None: NWM's protocol with the simulator's prior); distance: the
    goal distance (:data:`planners.cost.DISTANCES`); sampler_steps: DDIM steps per prediction;
    rollouts: stochastic rollouts averaged per candidate; lpips_weights: TorchScript LPIPS for
    the ``lpips`` distance; spacing: metres per spacing unit of the observed poses (None: the
    experts' training data, else the simulator's); alphas: {expert: alpha} of a memory method
    over ``default_alphas(sampler_steps)`` (0 leaves an expert out); distilled: a folder of
    networks distilled for ``sampler_steps`` (:mod:`nav_come.distill`) that replace the base and
    the experts; relevance: {expert: weight at full relevance} of a memory method's composition
    over ``DEFAULT_RELEVANCE`` (1: a fixed share); length_weight, collision_weight: the cost's
    penalties (:mod:`planners.cost`; a collision weight above 0 needs ``CKPT/collision``);
    clearance_floor: the clearance constraint (metres, also needs ``CKPT/collision``);
    progress_weight, progress_reduce: the goal-progress term (:class:`~planners.cost.ProgressTerm`;
    a weight above 0 needs ``CKPT/progress``); route_weight: the memory-route term
    (:mod:`planners.memory_route`);
    precision: auto | fp32 | bf16.
    Policies ignore all of it.
    """

    cem_config: cem.CEMConfig | None = None
    distance: str = _flag("auto", "--distance", f"goal distance: {' | '.join(DISTANCES)}")
    sampler_steps: int = _flag(DEFAULT_SAMPLER_STEPS, "--steps",
                               f"sampler steps per prediction (default {DEFAULT_SAMPLER_STEPS}; with --distilled: "
                               "the fewest distilled)", type=int)  # fmt: skip
    rollouts: int = _flag(3, "--rollouts", "stochastic rollouts averaged per candidate", type=int)
    lpips_weights: str | None = _flag(None, "--lpips-weights", "TorchScript LPIPS module; without it LPIPS is not used")
    spacing: float | None = None
    alphas: dict[str, float] | None = None
    relevance: dict[str, float] | None = None
    distilled: str | Path | None = _flag(None, "--distilled", "plan with the networks distilled for --steps in this "
                                         "folder (nav_come.distill)", type=Path)  # fmt: skip
    length_weight: float = _flag(0.0, "--length-weight", "CEM cost per spacing unit of path", type=float)
    collision_weight: float = _flag(0.0, "--collision-weight", "CEM cost per metre of collision risk (needs "
                                    "CKPT/collision, planners.collision)", type=float)  # fmt: skip
    clearance_floor: float = _flag(0.0, "--clearance-floor", "metres of clearance every imagined frame must keep: "
                                   "a candidate below it costs far more than any other (needs CKPT/collision; 0: "
                                   "off)", type=float)  # fmt: skip
    progress_weight: float = _flag(0.0, "--progress-weight", "CEM cost per frame of driving to the goal that the "
                                   "progress head estimates on every imagined frame (needs CKPT/progress, "
                                   "planners.progress)", type=float)  # fmt: skip
    progress_reduce: str = _flag("min", "--progress-reduce", "how a rollout's per-frame progress estimates combine",
                                 choices=PROGRESS_REDUCTIONS)  # fmt: skip
    route_weight: float = _flag(0.0, "--route-weight", "CEM cost per metre of route distance from a candidate's end "
                                "to where the goal was seen in the episode's memory (planners.memory_route; needs "
                                "the episode's frames and poses)", type=float)  # fmt: skip
    search: str = _flag("seeded", "--search", "world-model methods: seeded (default: CEM seeded with NoMaD's samples "
                        "and GNM's prediction, refined per step; needs CKPT/gnm and CKPT/nomad) or paper (NWM's CEM "
                        "from its prior)",
                        choices=SEARCHES)  # fmt: skip
    proposals_nomad: int = _flag(16, "--proposals-nomad", "seeded: NoMaD samples in the first population", type=int)
    proposals_gnm: int = _flag(8, "--proposals-gnm", "seeded: GNM's prediction and its noisy copies", type=int)
    prior_draws: int = _flag(0, "--prior-draws", "seeded: draws from NWM's prior in the first population (0: chosen "
                             "on validation worlds, docs/results.md)", type=int)  # fmt: skip
    refine: int = _flag(32, "--refine", "seeded: candidates of each refining iteration", type=int)
    seeded_iterations: int = _flag(2, "--seeded-iterations", "seeded: iterations (1: rank the first population)",
                                   type=int)  # fmt: skip
    precision: str = _flag("auto", "--precision", PLAN_PRECISION_HELP, choices=INFERENCE_PRECISIONS)

    def __post_init__(self) -> None:
        if self.distance not in DISTANCES:
            raise ValueError(f"unknown goal distance {self.distance!r}; choose one of {', '.join(DISTANCES)}")
        if self.precision not in INFERENCE_PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(INFERENCE_PRECISIONS)}")
        if self.sampler_steps < 1 or self.rollouts < 1:
            raise ValueError(f"sampler steps and rollouts must be >= 1, got {self.sampler_steps} and {self.rollouts}")
        if not (self.length_weight >= 0 and self.collision_weight >= 0 and self.progress_weight >= 0
                and self.route_weight >= 0 and self.clearance_floor >= 0):  # refuses NaN
            raise ValueError(f"penalty weights must be >= 0, got length {self.length_weight}, "
                             f"collision {self.collision_weight}, progress {self.progress_weight}, "
                             f"route {self.route_weight}, clearance floor {self.clearance_floor}")  # fmt: skip
        if self.progress_reduce not in PROGRESS_REDUCTIONS:
            raise ValueError(f"unknown progress reduction {self.progress_reduce!r}; choose one of "
                             f"{', '.join(PROGRESS_REDUCTIONS)}")  # fmt: skip
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; choose one of {', '.join(SEARCHES)}")
        counts = (self.proposals_nomad, self.proposals_gnm, self.prior_draws)
        if min(counts) < 0 or sum(counts) < 1 or self.refine < 1 or self.seeded_iterations < 1:
            raise ValueError(f"seeded search needs proposal and prior counts >= 0 (one above 0), --refine and "
                             f"--seeded-iterations >= 1; got {counts}, {self.refine}, {self.seeded_iterations}")
        if self.spacing is not None and not self.spacing > 0:
            raise ValueError(f"spacing must be > 0 metres per step, got {self.spacing}")
        unknown = set(self.alphas or {}) - set(DEFAULT_ALPHAS)
        if unknown:
            raise ValueError(f"alphas for unknown experts {sorted(unknown)}; the experts: {', '.join(DEFAULT_ALPHAS)}")

    def resolved_relevance(self) -> dict[str, float]:
        """Every expert's weight at full relevance: the defaults under the given ones."""
        return {**DEFAULT_RELEVANCE, **(self.relevance or {})}

    def resolved_alphas(self) -> dict[str, float]:
        """Every expert's alpha: the step count's defaults under the given ones."""
        return {**default_alphas(self.sampler_steps), **(self.alphas or {})}




def _expert_values(items: list[str], flag: str, names, metavar: str) -> dict[str, float]:
    """``["stm=2", "ltm=1.5"]`` -> {"stm": 2.0, "ltm": 1.5} for experts in ``names``; ValueError names the bad item."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value:
            raise ValueError(f"{flag} takes EXPERT={metavar} with EXPERT in {' '.join(names)}, got {item!r}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"{flag} {item!r}: {value!r} is not a number") from None
    return out


def parse_alphas(items: list[str]) -> dict[str, float]:
    """["stm=2", "ltm=1.5"] -> {"stm": 2.0, "ltm": 1.5}; ValueError names the bad item."""
    return _expert_values(items, "--alpha", DEFAULT_ALPHAS, "VALUE")


def relevance_weights(relevance: dict[str, float] | None = None) -> dict:
    """{expert: weight function of its condition} for :class:`nav_come.compose.ComposedDenoiser`'s
    ``weights``, from {expert: weight at full relevance} over ``DEFAULT_RELEVANCE`` (1: fixed)."""
    from nav_come.experts import distance_alpha, fit_weight

    relevance = {**DEFAULT_RELEVANCE, **(relevance or {})}
    unknown = set(relevance) - set(DEFAULT_RELEVANCE)
    if unknown:
        raise ValueError(f"relevance weights for {sorted(unknown)}: only {' and '.join(DEFAULT_RELEVANCE)} have one")
    out = {}
    if relevance.get("sltm", 1.0) != 1.0:
        out["sltm"] = distance_alpha(relevance["sltm"], 1.0, *RELEVANCE_NEAR_FAR)
    if relevance.get("ltm", 1.0) != 1.0:
        out["ltm"] = fit_weight(relevance["ltm"], 1.0, RELEVANCE_FIT)
    return out


def parse_relevance(items: list[str]) -> dict[str, float]:
    """``["sltm=4", "ltm=2"]`` -> {"sltm": 4.0, "ltm": 2.0} (the rest keep ``DEFAULT_RELEVANCE``); one
    line for a bad item."""
    out = _expert_values(items, "--relevance", DEFAULT_RELEVANCE, "W")
    for name, w in out.items():
        if not w > 0:
            raise ValueError(f"--relevance {name}={w:g}: the weight must be > 0 (1 keeps the expert's share fixed)")
    return out


def default_alphas(sampler_steps: int) -> dict[str, float]:
    """The experts' coefficients (base 1) for a sampler with this many steps: ``DEFAULT_ALPHAS``,
    or ``ONE_STEP_ALPHA`` for every memory expert with a one-step sampler."""
    if sampler_steps > 1:
        return dict(DEFAULT_ALPHAS)
    return {n: 1.0 if n == "base" else ONE_STEP_ALPHA for n in DEFAULT_ALPHAS}


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The planning flags every CLI shares, generated from :class:`PlanConfig`'s fields, plus the
    CEM search (--candidates, --top-k, --iterations) and --alpha; :func:`plan_config_from_args`
    reads them back."""
    g = p.add_argument_group("planning")
    g.add_argument("--candidates", type=int, default=cem.CEMConfig.n_candidates, help="CEM candidates")
    g.add_argument("--top-k", type=int, default=cem.CEMConfig.top_k, help="CEM elites")
    g.add_argument("--iterations", type=int, default=cem.CEMConfig.iterations, help="CEM iterations")
    g.add_argument("--alpha", nargs="+", default=[], metavar="EXPERT=A",
                   help="memory methods: an expert's coefficient (base 1); 0 leaves the expert out")  # fmt: skip
    g.add_argument("--relevance", nargs="+", default=[], metavar="EXPERT=W",
                   help="memory methods: an expert's share of the mixture at full relevance (1: fixed; default "
                        f"{' '.join(f'{k}={v:g}' for k, v in DEFAULT_RELEVANCE.items())})")  # fmt: skip
    for f in fields(PlanConfig):
        if "flag" in f.metadata:
            extra = {k: v for k, v in f.metadata.items() if k not in ("flag", "help")}
            default = None if f.name == "sampler_steps" else f.default  # resolved with --distilled
            g.add_argument(f.metadata["flag"], dest=f.name, default=default, help=f.metadata["help"], **extra)


def plan_config_from_args(args: argparse.Namespace, data: DataConfig, spacing: float | None = None) -> PlanConfig:
    """The :class:`PlanConfig` of :func:`add_plan_args`' flags, CEM on ``data``'s prior. Raises
    ValueError with one line for a bad value."""
    from nav_come.distill import resolve_steps

    if min(args.candidates, args.top_k, args.iterations) < 1 or args.top_k > args.candidates:
        raise ValueError(f"--candidates, --top-k and --iterations must be >= 1 and --top-k <= --candidates, got "
                         f"{args.candidates}, {args.top_k}, {args.iterations}")  # fmt: skip
    if args.sampler_steps is not None and args.sampler_steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.sampler_steps}")
    steps = resolve_steps(args.distilled, args.sampler_steps) if args.distilled else args.sampler_steps
    cem_config = cem.CEMConfig.for_dataset(data, n_candidates=args.candidates, top_k=args.top_k,
                                           iterations=args.iterations)  # fmt: skip
    settings = {f.name: getattr(args, f.name) for f in fields(PlanConfig) if "flag" in f.metadata}
    return PlanConfig(**{**settings, "sampler_steps": steps or DEFAULT_SAMPLER_STEPS, "cem_config": cem_config,
                         "alphas": parse_alphas(args.alpha), "relevance": parse_relevance(args.relevance),
                         "spacing": spacing})  # fmt: skip
