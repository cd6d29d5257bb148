"""Solving: which (weight, activation) width each layer gets under a budget.

    spec.py     SolveSpec: what may be chosen (candidates, pins, ties, sensitivities, latency, MIP)
    problem.py  the Problem a spec makes of a profile: units, allowed candidates, Ω, totals, pairs
    budget.py   Budget: the limits, and what they mean for a problem
    sizes.py    exact size arithmetic (weight bits, BOPs, activation bytes, latency)
    mip.py      a neutral MIP model and its backends (CBC, HiGHS)
    ilp.py      the one-hot ILP, its exclusions and infeasibility messages
    quadratic.py  the cross-layer terms' product columns
    plan.py     Plan and its JSON artifact
    verbs.py    solve, alternatives, sweep, uniform_plan, uniform_plans_within, fixed_plan
"""
from .budget import ACT_KIND, BUDGET_KINDS, BUDGET_UNITS, Budget
from .mip import SOLVERS, solver_backend
from .plan import LOSS_MODELS, LayerChoice, Plan, profile_fingerprint
from .problem import pinned_layers
from .sizes import GIGA, KB, MB, avg_bits_of, peak_act_bytes, plan_bops, plan_weight_bytes
from .spec import DEFAULT_PINS, GRAPH_TIES, SolveSpec, candidate_bits, candidate_pairs, default_pins
from .verbs import SWEEP_AXES, alternatives, fixed_plan, solve, sweep, uniform_plan, uniform_plans_within

__all__ = [
    "ACT_KIND", "BUDGET_KINDS", "BUDGET_UNITS", "Budget", "DEFAULT_PINS", "GIGA", "GRAPH_TIES", "KB", "LOSS_MODELS",
    "LayerChoice", "MB", "Plan", "SOLVERS", "SWEEP_AXES", "SolveSpec", "alternatives", "avg_bits_of",
    "candidate_bits", "candidate_pairs", "default_pins", "fixed_plan", "peak_act_bytes", "pinned_layers", "plan_bops", "plan_weight_bytes",
    "profile_fingerprint", "solve", "solver_backend", "sweep", "uniform_plan", "uniform_plans_within",
]
