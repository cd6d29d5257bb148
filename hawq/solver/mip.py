"""A neutral mixed-integer model (columns, rows lo ≤ a·x ≤ hi) and the backends that solve it
exactly: CBC (bundled with PuLP) and HiGHS (highspy), in BACKENDS; solver_backend picks one."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pulp

from ..errors import ConfigError

# CBC options, each checked against brute force on thousands of random instances:
# - increment: CBC prunes nodes that do not beat the incumbent by this (default 1e-5), far too
#   coarse for near-equal plans; dualT/primalT/integerT: default 1e-7 tolerances lose Ω
#   differences of ~1e-7 of the objective;
# - preprocess off: CBC 2.10's default SOS preprocessing returns wrong "optimal" plans on these
#   one-hot models (seen here; upstream coin-or/Cbc issue 283). The models are tiny, so it costs
#   nothing.
_CBC_OPTIONS = ("increment 1e-12", "dualT 1e-11", "primalT 1e-10", "integerT 1e-10", "preprocess off")
SOLVERS = ("auto", "highs", "cbc")
AUTO_CBC_UNITS = 300  # "auto" takes CBC (exact to 1e-12) up to this many free units, HiGHS beyond
# HiGHS options: prove optimality exactly (no gap), and hold rows to 1e-10 so that Ω differences
# of 1e-10 of the objective still count (checked against brute force like CBC's). Integrality at
# 1e-9: at 1e-10 HiGHS 1.16 returned worse plans as "Optimal" on the quadratic model (ViT's profile
# at 4 bits, third alternative: 0.00623 against 0.00610; MobileNetV2 8 bits); at its default 1e-6
# it misses Ω differences of 2e-7 relative that the brute-force tests hold it to; 1e-8 and 1e-9
# pass both (benchmarks/solver_alternatives.py, tests/test_solver.py).
_HIGHS_OPTIONS = (("output_flag", False), ("mip_rel_gap", 0.0), ("mip_abs_gap", 0.0),
                  ("mip_feasibility_tolerance", 1e-9), ("primal_feasibility_tolerance", 1e-10),
                  ("dual_feasibility_tolerance", 1e-10), ("threads", 1))


def _highspy() -> Any:
    """The highspy module, or None when it is not installed.

    HiGHS prints a banner the first time a solver is made in a process; it goes to /dev/null.
    """
    try:
        import highspy
    except ImportError:
        return None
    if not getattr(_highspy, "quiet", False):
        out = os.dup(1)
        try:
            with open(os.devnull, "w") as null:
                os.dup2(null.fileno(), 1)
                highspy.Highs()
        finally:
            os.dup2(out, 1)
            os.close(out)
        _highspy.quiet = True  # type: ignore[attr-defined]
    return highspy


def solver_backend(solver: str = "auto", units: int = 0, quadratic: bool = False) -> str:
    """The MIP solver `solver` means for a model of `units` free units: "highs" or "cbc".

    CBC (bundled with PuLP) proves optimality to 1e-12 of the objective and is fast up to a few
    hundred layers; beyond, with its preprocessing kept off (see _CBC_OPTIONS), it can branch for
    minutes where HiGHS (the highspy package) closes the gap at the root in seconds, optimal to its
    tolerances (about 1e-8 of the largest per-layer Ω range).

    solver: "auto" (CBC up to AUTO_CBC_UNITS free units, HiGHS beyond when highspy is installed),
        "highs" or "cbc".
    units: free units (layers or tie groups not fixed by a pin) in the model.
    quadratic: whether the model has cross-layer pair columns; "auto" then takes HiGHS at any size.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver={solver!r} is not one of {', '.join(SOLVERS)}")
    if solver == "cbc" or (solver == "auto" and ((units <= AUTO_CBC_UNITS and not quadratic) or _highspy() is None)):
        return "cbc"
    if _highspy() is None:
        raise ConfigError("solver='highs' needs the highspy package (pip install highspy); or use solver='cbc'")
    return "highs"


@dataclass
class LinearModel:
    """A minimisation model in neutral form: columns (cost, bounds, integrality), rows lo ≤ a·x ≤ hi."""

    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[tuple[list[int], list[float], float, float]] = field(default_factory=list)
    presolve: bool = True  # False: HiGHS without presolve (see run_highs)

    def col(self, cost: float = 0.0, lower: float = 0.0, upper: float = 1.0, integer: bool = True) -> int:
        """Add a column; its index.

        cost: objective coefficient.
        lower, upper: bounds.
        integer: integrality.
        """
        self.cost.append(cost)
        self.lower.append(lower)
        self.upper.append(upper)
        self.integer.append(integer)
        return len(self.cost) - 1

    def row(self, terms: Sequence[tuple[int, float]], lo: float, hi: float) -> None:
        """Add the row lo ≤ Σ value·x[index] ≤ hi (skipped when it has no terms).

        terms: (column, coefficient) pairs.
        lo, hi: bounds (±inf for none).
        """
        if terms:
            self.rows.append(([i for i, _ in terms], [v for _, v in terms], lo, hi))


@dataclass(frozen=True)
class MipResult:
    """status: "Optimal", "Feasible" (time limit, with a solution), "Infeasible" or "NoSolution"."""

    status: str
    values: tuple[float, ...] = ()
    gap: float = 0.0


class SolverCrash(Exception):
    """CBC died instead of answering (see solve_ilp)."""


def run_cbc(lp: LinearModel, time_limit: float | None) -> MipResult:
    """Solve `lp` with PuLP's bundled CBC and the exact options of _CBC_OPTIONS.

    lp: the model.
    time_limit: seconds, or None.
    """
    prob = pulp.LpProblem("hawq_bits", pulp.LpMinimize)
    xs = [prob.add_variable(f"c{j}", lowBound=lo, upBound=None if hi == math.inf else hi,
                            cat=pulp.LpBinary if integ and (lo, hi) == (0, 1)
                            else pulp.LpInteger if integ else pulp.LpContinuous)
          for j, (lo, hi, integ) in enumerate(zip(lp.lower, lp.upper, lp.integer))]
    prob += pulp.LpAffineExpression([(xs[j], c) for j, c in enumerate(lp.cost) if c])
    for idx, vals, lo, hi in lp.rows:
        expr = pulp.LpAffineExpression(list(zip((xs[i] for i in idx), vals)))
        if lo == hi:
            prob.addConstraint(expr == hi)
        else:
            if hi < math.inf:
                prob.addConstraint(expr <= hi)
            if lo > -math.inf:
                prob.addConstraint(expr >= lo)

    def cbc(mip: bool, limit: float | None) -> pulp.LpSolver:
        with warnings.catch_warnings():  # PuLP 3.x announces PULP_CBC_CMD's removal in 4.0
            warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
            return pulp.PULP_CBC_CMD(msg=False, mip=mip, timeLimit=limit, gapRel=0, gapAbs=0, options=list(_CBC_OPTIONS))

    try:
        prob.solve(cbc(True, time_limit))
    except pulp.PulpSolverError as e:
        raise SolverCrash(str(e)) from e
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return MipResult("Infeasible" if prob.status == pulp.LpStatusInfeasible or time_limit is None else "NoSolution")
    values = tuple(v.varValue or 0.0 for v in xs)
    if prob.sol_status == pulp.LpSolutionOptimal:
        return MipResult("Optimal", values)
    found = math.fsum(c * v for c, v in zip(lp.cost, values))
    prob.solve(cbc(False, None))  # the LP relaxation bounds the gap
    bound = pulp.value(prob.objective) or 0.0
    return MipResult("Feasible", values, max(0.0, found - bound) / max(abs(found), 1e-300))


def run_highs(lp: LinearModel, time_limit: float | None) -> MipResult:
    """Solve `lp` with HiGHS (highspy) and the exact options of _HIGHS_OPTIONS.

    lp: the model.
    time_limit: seconds, or None.
    """
    import numpy as np

    hs = _highspy()
    h = hs.Highs()
    for k, v in _HIGHS_OPTIONS:
        h.setOptionValue(k, v)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if not lp.presolve:
        # With presolve (and the previous formulation) HiGHS 1.16 returned plans worse than others
        # that keep the same limits as "Optimal" on the quadratic model (MobileNetV2's profile at
        # 3.33 bits: 0.0832 against 0.0811; benchmarks/solver_alternatives.py); presolve reduces
        # nothing on these models, so they go without. Without it, such answers remained until
        # integrality was held to 1e-9 instead of 1e-10 (_HIGHS_OPTIONS).
        h.setOptionValue("presolve", "off")
    m = hs.HighsLp()
    m.num_col_, m.num_row_ = len(lp.cost), len(lp.rows)
    m.col_cost_, m.col_lower_, m.col_upper_ = (np.asarray(a, dtype=float) for a in (lp.cost, lp.lower, lp.upper))
    m.row_lower_ = np.asarray([r[2] for r in lp.rows], dtype=float)
    m.row_upper_ = np.asarray([r[3] for r in lp.rows], dtype=float)
    a = m.a_matrix_
    a.format_, a.num_col_, a.num_row_ = hs.MatrixFormat.kRowwise, len(lp.cost), len(lp.rows)
    a.start_ = np.cumsum([0] + [len(r[0]) for r in lp.rows]).astype(np.int32)
    a.index_ = np.asarray([i for r in lp.rows for i in r[0]], dtype=np.int32)
    a.value_ = np.asarray([v for r in lp.rows for v in r[1]], dtype=float)
    m.integrality_ = [hs.HighsVarType.kInteger if i else hs.HighsVarType.kContinuous for i in lp.integer]
    h.passModel(m)
    h.run()
    status, info = h.getModelStatus(), h.getInfo()
    if status == hs.HighsModelStatus.kOptimal:
        return MipResult("Optimal", tuple(h.getSolution().col_value))
    if status == hs.HighsModelStatus.kInfeasible:
        return MipResult("Infeasible")
    if info.primal_solution_status == hs.SolutionStatus.kSolutionStatusFeasible:
        return MipResult("Feasible", tuple(h.getSolution().col_value), max(0.0, float(info.mip_gap)))
    return MipResult("NoSolution")


BACKENDS: dict[str, Callable[[LinearModel, float | None], MipResult]] = {"cbc": run_cbc, "highs": run_highs}
