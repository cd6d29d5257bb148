"""The quadratic model's part of the ILP: the cross-layer terms as product columns and the rows
that tie them to the one-hot binaries.

With cross-layer terms the objective is Σ Ω·x + Σ_{u<v} q_uv(c, d)·x[u,c]·x[v,d]. Per pair of
free units, the block q is split at each unit's reference candidate (its widest, whose rounding
error is least): q(c, d) = r(c, d) + q(c, ref_v) + q(ref_u, d) − q(ref_u, ref_v), where the
residual r is zero on the reference row and column. The two single terms are linear and go into
the units' costs; only r needs product columns y[c, d] ≥ 0, for c and d both not the reference,
tied to the binaries by

    Σ_d y[c, d] ≤ x[u, c],   Σ_c y[c, d] ≤ x[v, d],   Σ y ≥ Σ_{c≠ref} x[u, c] + Σ_{d≠ref} x[v, d] − 1,

which force y = x·x at every integer point whatever the signs of r. This is the projection of the
full assignment linearisation (Σ_d y = x[u, c] and Σ_c y = x[v, d] over every candidate), so its LP
bound is the same, with (k−1)² columns per pair instead of k².

Tried and dropped, measured on MobileNetV2's profile: starting HiGHS from a near-optimal plan
(the linear part's optimum improved by one- and two-layer moves) cut five solves from 29.4 s to
19.1 s, but HiGHS 1.16 then returned plans worse than the optimum as "Optimal" (an alternative at
4 bits: 0.0499 against 0.0476 without the start); products of the limit rows with each binary
(the reformulation-linearisation technique) closed 60% of the root gap but made each node
slower (30.1 s against 19.1 s).
"""
from __future__ import annotations

import math
from typing import Sequence

from .mip import LinearModel
from .problem import Problem
from .sizes import Cand

Block = list[list[float]]


def pair_blocks(p: Problem, cost: list[list[float]]) -> dict[tuple[int, int], Block]:
    """The pair terms of the quadratic objective over the allowed candidates: per pair of free
    units its matrix [k][k2]; a pair with one fixed unit is added to the free unit's `cost` (in
    place), a pair of fixed units is a constant and dropped.

    p: the validated problem.
    cost: per unit and allowed candidate, its Ω (changed in place).
    """
    blocks = {}
    for (u, v), q in p.pairs.items():
        au, av = p.allowed[u], p.allowed[v]
        if len(au) > 1 and len(av) > 1:
            blocks[u, v] = [[q[c[0], d[0]] for d in av] for c in au]
        elif len(au) > 1:
            cost[u] = [t + q[c[0], av[0][0]] for t, c in zip(cost[u], au)]
        elif len(av) > 1:
            cost[v] = [t + q[au[0][0], d[0]] for t, d in zip(cost[v], av)]
    return blocks


def reference(allowed: Sequence[Cand]) -> int:
    """The index of a unit's reference candidate, its widest.

    allowed: the unit's candidates.
    """
    return max(range(len(allowed)), key=allowed.__getitem__)


def residuals(p: Problem, cost: list[list[float]]) -> dict[tuple[int, int], Block]:
    """Per pair of free units, its residual block r (see the module's docstring); the reference
    row and column are moved into the two units' `cost` (in place). The objective is unchanged at
    every plan, up to a constant.

    p: the validated problem.
    cost: per unit and allowed candidate, its Ω (changed in place).
    """
    out = {}
    for (u, v), m in pair_blocks(p, cost).items():
        ru, rv = reference(p.allowed[u]), reference(p.allowed[v])
        cost[u] = [c + row[rv] for c, row in zip(cost[u], m)]
        cost[v] = [c + m[ru][k2] - m[ru][rv] for k2, c in enumerate(cost[v])]
        out[u, v] = [[t - row[rv] - m[ru][k2] + m[ru][rv] for k2, t in enumerate(row)] for row in m]
    return out


def add_products(lp: LinearModel, p: Problem, x: dict[tuple[int, int], int], blocks: dict[tuple[int, int], Block],
                 scale: float) -> int:
    """Add each residual's product columns and the rows that tie them to the binaries; how many
    columns were added.

    lp: the model (changed in place).
    p: the validated problem.
    x: (unit, candidate index) → column.
    blocks: the residuals.
    scale: the objective's common divisor.
    """
    added = 0
    for (u, v), m in blocks.items():
        ru, rv = reference(p.allowed[u]), reference(p.allowed[v])
        y = {(k, k2): lp.col(t / scale, 0.0, 1.0, False) for k, row in enumerate(m) for k2, t in enumerate(row)
             if k != ru and k2 != rv}
        if not y:
            continue
        for k in range(len(m)):
            if k != ru:
                lp.row([(j, 1.0) for (a, _), j in y.items() if a == k] + [(x[u, k], -1.0)], -math.inf, 0.0)
        for k2 in range(len(m[0])):
            if k2 != rv:
                lp.row([(j, 1.0) for (_, b), j in y.items() if b == k2] + [(x[v, k2], -1.0)], -math.inf, 0.0)
        lp.row([(j, 1.0) for j in y.values()] + [(x[u, k], -1.0) for k in range(len(m)) if k != ru]
               + [(x[v, k2], -1.0) for k2 in range(len(m[0])) if k2 != rv], -1.0, math.inf)
        added += len(y)
    return added
