"""Hybrid searcher: solver plans at the target and neighbouring budgets, and uniform plans, seed an evolution.

1. Seeds: the ILP (or DP) solves the additive proxy at the target budget and at budgets scaled by
   ``neighbours`` (plans of looser budgets are repaired into the target budget), and every uniform
   plan that fits, its leftover budget spent where the proxy gains most. All distinct seeds are
   scored on the standard calibration windows; uniform seeds keep the hybrid robust where the
   additive proxy is poor (very low bits, where layer errors compound).
2. Proxy correction (``corrections`` rounds): a scale per option is fitted to the real fitness of
   the plans scored so far and the solver re-solves the target budget with the rescaled proxy; a
   new plan is scored like a seed. With ``linearise = k`` the best plan so far is then the reference
   of operating-point sensitivities (:mod:`layerbudget.search.operating_point`), measured for the
   ``k`` switches per slot nearest in budget cost, and the solver's plan on them is scored too.
3. The best-scoring plan becomes the parent of an :class:`EvolutionSearcher`, which corrects the
   additivity assumption with real fitness. With ``max_evaluations`` the whole search, seeds
   included, stays within it, and the evolution is sized to what is left.
4. The evolution's winner is re-scored on the standard calibration windows (unless its last stage
   already did).
5. Validation (``validate = k``): of the ``k`` best distinct plans on the standard calibration
   windows, those within ``tolerance`` (relative) of the best are scored once more on a validation
   batch of ``validation_windows`` windows the search never compared plans on, and the result is
   the best of them there: hundreds of plans compared on the same few windows make the
   calibration-best plan's score optimistic (the winner's curse). Without validation, or when no
   other plan is within the tolerance, the result is the best plan on the standard calibration
   windows, never worse there than the best seed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.problem import INACTIVE, Budget, Candidate, Constraint, EvalRequest, Evaluation, Problem
from layerbudget.search.anchor import AnchorPenalty
from layerbudget.search.base import Searcher, register_searcher
from layerbudget.search.dp import solve_dp
from layerbudget.search.evolution import CALIB, EvolutionParams, EvolutionSearcher
from layerbudget.search.feasible import FeasibleSpace
from layerbudget.search.ilp import explain_infeasible, solve_ilp
from layerbudget.search.operating_point import deviations, sensitivities

DEFAULT_NEIGHBOURS = (0.98, 0.96, 0.93, 1.02, 1.05)
DEFAULT_VALIDATE = 4
DEFAULT_VALIDATION_WINDOWS = 64
DEFAULT_TOLERANCE = 0.01
DEFAULT_ANCHOR = 0.0
VALIDATION_BATCH = 2**31 - 1  # the evolution draws its fresh batches below this, so never this one


def scaled_budget(budget: Budget, factor: float) -> Budget:
    """Every ``<=`` constraint times ``factor`` and every ``>=`` constraint divided by it."""
    out = []
    for c in budget.constraints:
        value = c.value * factor if c.sense == "<=" else c.value / factor
        if c.metric == "sparsity":
            value = min(value, 0.999)
        out.append(Constraint(c.metric, value))
    return Budget(tuple(out))


def solver_seeds(
    problem: Problem, budget: Budget, neighbours: Sequence[float], solver: str
) -> list[Candidate]:
    """Distinct feasible solver plans at the target budget and its neighbours (repaired when needed)."""
    space = FeasibleSpace(problem, budget)
    solve = solve_ilp if solver == "ilp" else solve_dp
    seeds: list[Candidate] = []
    for factor in (1.0, *neighbours):
        try:
            cand = solve(problem, scaled_budget(budget, factor))
        except LayerbudgetError:  # a neighbour may be infeasible on its own
            continue
        if not problem.satisfies(cand, budget):
            cand = space.repair(cand)
        if cand is not None and cand not in seeds:
            seeds.append(cand)
    return seeds


def uniform_seeds(problem: Problem, budget: Budget) -> list[Candidate]:
    """Every uniform plan that fits, least compressed first, its leftover budget spent by the proxy."""
    space = FeasibleSpace(problem, budget)
    fits = [c for _, c in sorted(problem.fitting_uniform(budget).items())]
    fits.sort(key=lambda c: -float(space.sign @ space.totals(c)))
    seeds: list[Candidate] = []
    for cand in fits:
        filled = space.fill(cand)
        if filled not in seeds:
            seeds.append(filled)
    return seeds


def _factors_ok(value: tuple[float, ...]) -> str | None:
    return None if all(f > 0 for f in value) else "must be positive budget factors"


@dataclass(frozen=True)
class HybridParams(Record):
    """Parameters of :class:`HybridSearcher` (module docstring); the evolution's own parameters are
    given beside them and land in ``evolution``.

    ``neighbours``: budget factors of the extra solver plans; ``solver``: "ilp" or "dp";
    ``uniform``: also seed from the fitting uniform plans; ``corrections``: rounds of proxy
    correction; ``linearise``: switches per slot of the operating-point step (0: none);
    ``validate``: finalists compared on the validation batch (0 or 1: none);
    ``anchor``: relative penalty per slot away from the solver's plan when plans are ranked
    (:class:`~layerbudget.search.anchor.AnchorPenalty`; 0: none);
    ``max_evaluations``: a hard cap on everything the hybrid asks, seeds included.
    """

    WHERE = "hybrid"
    neighbours: tuple[float, ...] = rule(DEFAULT_NEIGHBOURS, check=_factors_ok)
    solver: Literal["ilp", "dp"] = "ilp"
    uniform: bool = True
    corrections: int = rule(2, least=0)
    linearise: int = rule(0, least=0)
    validate: int = rule(DEFAULT_VALIDATE, least=0)
    validation_windows: int = rule(DEFAULT_VALIDATION_WINDOWS, least=1)
    tolerance: float = rule(DEFAULT_TOLERANCE, least=0)
    anchor: float = rule(DEFAULT_ANCHOR, least=0)
    max_evaluations: int | None = rule(None, least=1)
    evolution: EvolutionParams = rule(default_factory=EvolutionParams, flat=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.evolution.init != "uniform" or self.evolution.init_candidate is not None:
            raise LayerbudgetError("hybrid sets the evolution's start itself; remove init and init_candidate")


@register_searcher
class HybridSearcher(Searcher):
    """Solver and uniform plans seed an EvoPress-style evolution (module docstring, :class:`HybridParams`)."""

    name = "hybrid"
    Params = HybridParams

    def __init__(self, problem, budget, *, seed: int = 0, params: HybridParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        p: HybridParams = self.params
        solver, corrections, linearise = p.solver, p.corrections, p.linearise
        self.corrections = corrections
        self.linearise = linearise
        self.validate = 0 if p.validate == 1 else p.validate  # one plan needs no comparison
        self.validation_windows = p.validation_windows
        self.tolerance = p.tolerance
        self._metric = budget.constraints[0].metric
        self._solve = solve_ilp if solver == "ilp" else solve_dp
        self.seeds = solver_seeds(problem, budget, p.neighbours, solver)
        self.n_solver_seeds = len(self.seeds)  # seeds[:n] are solver plans, the rest uniform plans
        # plans are ranked with a penalty per slot that differs from the solver's plan at the target
        self.penalty = AnchorPenalty(self.seeds[0] if self.seeds else None, p.anchor)
        if p.uniform:
            self.seeds += [c for c in uniform_seeds(problem, budget) if c not in self.seeds]
        if not self.seeds:
            raise LayerbudgetError(f"no solver plan fits budget {budget}: {explain_infeasible(problem, budget)}")
        self.max_evaluations = p.max_evaluations
        switches = sum(min(linearise, len(sl.options) - 1) for sl in problem.slots) + 1 if linearise else 0
        before = len(self.seeds) + corrections + switches  # evaluations before the evolution, at most
        probe = self._make_evolution(self.seeds[0], before)  # checks the evolution's parameters now
        # the final re-score of the winner, and the validation requests
        self._reserve = (0 if probe.stages[-1][1] == CALIB else 1) + self.validate
        self._fresh_windows = max(probe.fresh_windows(), self.validation_windows if self.validate else 0)
        if self.max_evaluations is not None:
            self._make_evolution(self.seeds[0], before + self._reserve)
        self.scores: dict[Candidate, float] = {}  # standard calibration windows only
        self.validation: dict[Candidate, float] = {}  # the finalists on the validation batch
        self.evolution: EvolutionSearcher | None = None
        self.start: Candidate | None = None  # the seed the evolution started from
        self.evaluations = 0
        self._rounds = 0
        self._corrected: Candidate | None = None
        self.lin_reference: Candidate | None = None  # where the operating-point sensitivities were taken
        self._lin_asked: list[Candidate] = []
        self._phase = "seeds"

    def _make_evolution(self, parent: Candidate, spent: int) -> EvolutionSearcher:
        params = dataclasses.replace(self.params.evolution, init="plan", init_candidate=parent)
        if self.max_evaluations is not None:
            left = self.max_evaluations - spent
            if left < 1:
                raise LayerbudgetError(
                    f"hybrid max_evaluations={self.max_evaluations} leaves nothing for the evolution after "
                    f"{len(self.seeds)} seeds, {self.corrections} corrected plans"
                    + (f" and the switches of linearise={self.linearise}" if self.linearise else "")
                )
            params = dataclasses.replace(params, max_evaluations=left)
        return EvolutionSearcher(self.problem, self.budget, seed=self.seed, params=params)

    def ask(self) -> list[EvalRequest]:
        if self._phase == "seeds":
            return [EvalRequest(c) for c in self.seeds]
        if self._phase == "corrected":
            assert self._corrected is not None
            return [EvalRequest(self._corrected)]
        if self._phase == "linearise":
            return [EvalRequest(c) for c in self._lin_asked]
        if self._phase == "evolution":
            assert self.evolution is not None
            requests = self.evolution.ask()
            if requests:
                return requests
            self._phase = "final"
            winner = self.evolution.result()
            if winner not in self.scores:
                return [EvalRequest(winner)]
        if self._phase == "final":
            self._phase = "validate"
            finalists = self._finalists()
            if len(finalists) > 1:
                return [
                    EvalRequest(c, windows=self.validation_windows, batch=VALIDATION_BATCH) for c in finalists
                ]
        self._phase = "done"
        return []

    def tell(self, evaluations: list[Evaluation]) -> None:
        self.evaluations += len(evaluations)
        if self._phase == "evolution":
            assert self.evolution is not None
            self.scores.update((e.candidate, e.fitness) for e in evaluations if e.request.windows is None)
            self.evolution.tell(self.penalty.evaluations(evaluations))
            return
        if self._phase == "validate":
            self.validation.update((e.candidate, e.fitness) for e in evaluations)
            return
        for e in evaluations:
            self.scores[e.candidate] = e.fitness
        if self._phase not in ("seeds", "corrected", "linearise"):
            return
        if self._phase != "linearise":
            self._corrected = self._correction() if self._rounds < self.corrections else None
            if self._corrected is not None:
                self._rounds += 1
                self._phase = "corrected"
                return
            if self.linearise and self.lin_reference is None:
                self.lin_reference = self.calibration_best()
                moves = deviations(self.problem, self.lin_reference, nearest=self.linearise, metric=self._metric)
                self._lin_asked = [c for c in dict.fromkeys(moves.values()) if c not in self.scores]
                self._phase = "linearise"
                if self._lin_asked:
                    return
        if self._phase == "linearise":
            self._corrected = self._linearised()
            if self._corrected is not None:
                self._phase = "corrected"  # scored like a corrected plan, then the evolution
                return
        self.start = best = self.calibration_best()
        self.evolution = self._make_evolution(best, self.evaluations + self._reserve)
        self.evolution.remember(self.penalty.scores(self.scores))
        self._phase = "evolution"

    def _linearised(self) -> Candidate | None:
        """The solver's plan on operating-point sensitivities around ``lin_reference`` (only the
        ``linearise`` switches per slot nearest in cost were measured); None if already scored."""
        assert self.lin_reference is not None
        return self._solve_on(
            sensitivities(self.problem, self.lin_reference, self.scores, nearest=self.linearise, metric=self._metric)
        )

    def _solve_on(self, proxy: list[np.ndarray]) -> Candidate | None:
        """The solver's plan for the target budget on ``proxy``; None if none fits or it is already scored."""
        try:
            cand = self._solve(self.problem.with_proxy(proxy), self.budget)
        except LayerbudgetError:
            return None
        return None if cand in self.scores else cand

    def _correction(self) -> Candidate | None:
        """The solver's plan under the proxy rescaled per option to fit the scored plans; None if known.

        The one-at-a-time proxy is measured from the dense model; at low budgets, where layer errors
        compound, it misjudges some options more than others (e.g. large-group 2-bit RTN). A scale
        per option, fitted by ridge regression towards 1 to the real fitness of every plan scored so
        far (fitness ~ sum over options of scale x the proxy of the slots at that option), corrects
        that part of the error; the solver then re-solves the target budget with the scaled proxy.
        """
        plans = [(c, f) for c, f in self.scores.items() if math.isfinite(f)]
        names = sorted({o for s in self.problem.slots for o in s.options})
        col = {o: k for k, o in enumerate(names)}
        x = np.zeros((len(plans), len(names)))
        for r, (cand, _) in enumerate(plans):
            for i, c in enumerate(cand):
                if c != INACTIVE:
                    x[r, col[self.problem.slots[i].options[c]]] += self.problem.proxy[i][c]
        used = np.abs(x).sum(axis=0) > 0
        if len(plans) < 2 or not used.any():
            return None
        a = x[:, used]
        ridge = 0.1 * float(np.mean(np.diag(a.T @ a))) or 1.0
        y = np.asarray([f for _, f in plans])
        fit = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y + ridge)
        scale = np.ones(len(names))
        scale[used] = np.maximum(fit, 0.05)
        return self._solve_on(
            [p * np.asarray([scale[col[o]] for o in s.options]) for p, s in zip(self.problem.proxy, self.problem.slots)]
        )

    def fresh_windows(self) -> int:
        return self._fresh_windows

    def _ranked(self) -> list[Candidate]:
        """Plans that fit the budget and scored finite on the calibration windows, best first."""
        finite = {  # the operating-point switches are scored too, and most break the budget
            c: self.penalty(c, f)
            for c, f in self.scores.items()
            if math.isfinite(f) and self.problem.satisfies(c, self.budget)
        }
        return sorted(finite, key=lambda c: (finite[c], c))

    def _finalists(self) -> list[Candidate]:
        """The ``validate`` best plans within ``tolerance`` (relative) of the best on the calibration windows."""
        ranked = self._ranked()
        if not ranked:
            return []
        best = self.penalty(ranked[0], self.scores[ranked[0]])
        limit = best + self.tolerance * abs(best)
        return [c for c in ranked[: self.validate] if self.penalty(c, self.scores[c]) <= limit]

    def calibration_best(self) -> Candidate:
        """The best plan on the standard calibration windows (what the search optimises; before validation)."""
        ranked = self._ranked()
        if not ranked:
            raise LayerbudgetError("every seed plan scored NaN or inf; the model cannot be evaluated")
        return ranked[0]

    def result(self) -> Candidate:
        """The best finalist on the validation batch, or (without one) the best on the calibration set."""
        valid = {c: self.penalty(c, f) for c, f in self.validation.items() if math.isfinite(f)}
        if valid:
            return min(valid, key=lambda c: (valid[c], self.scores[c], c))
        return self.calibration_best()
