"""Optuna searcher: a study over per-slot categorical choices with the budget as trial constraints.

Every slot is one ``suggest_categorical``; each budget constraint becomes
``trial.set_constraint(metric, violation)`` of the sampled parameters (feasible when ≤ 0). A
sampled candidate outside the budget is repaired into it (greedy, proxy-guided) and the trial is
told the repaired candidate's fitness (Baldwinian learning): at tight budgets almost every random
draw is infeasible, and telling penalties instead floods the study with useless trials. Repeated
candidates are told their known fitness; only new candidates are sent to the executor —
``max_evaluations`` counts those. The study is seeded (``enqueue_trial``) with the ILP solution
and the best-proxy uniform plan that fits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.trial import TrialState

from layerbudget.errors import LayerbudgetError, Record, rule
from layerbudget.problem import LE, Candidate, EvalRequest, Evaluation
from layerbudget.search.base import Searcher, register_searcher
from layerbudget.search.feasible import FeasibleSpace
from layerbudget.search.ilp import solve_ilp

PENALTY = 1e9


@dataclass(frozen=True)
class OptunaParams(Record):
    """``max_evaluations``: new candidates sent to the executor; ``batch``: candidates asked per round;
    ``seed_plans``: enqueue the ILP and best uniform plans first; ``max_attempts``: trials per ask."""

    WHERE = "optuna"
    sampler: Literal["nsga2", "tpe"] = "tpe"
    max_evaluations: int = rule(100, least=1)
    batch: int = rule(8, least=1)
    seed_plans: bool = True
    max_attempts: int = rule(2000, least=1)


@register_searcher
class OptunaSearcher(Searcher):
    """Optuna study (NSGA-II or TPE) proposing candidates, asked in batches for parallel scoring."""

    name = "optuna"
    Params = OptunaParams

    def __init__(self, problem, budget, *, seed: int = 0, params: OptunaParams | None = None):
        super().__init__(problem, budget, seed=seed, params=params)
        p = self.params
        sampler, max_evaluations, batch, seed_plans, max_attempts = (
            p.sampler, p.max_evaluations, p.batch, p.seed_plans, p.max_attempts
        )
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        smp = optuna.samplers.NSGAIISampler(seed=seed) if sampler == "nsga2" else optuna.samplers.TPESampler(seed=seed)
        self.study = optuna.create_study(direction="minimize", sampler=smp)
        self.max_evaluations = max_evaluations
        self.batch = batch
        self.max_attempts = max_attempts
        self.space = FeasibleSpace(problem, budget)
        self.scores: dict[Candidate, float] = {}
        self._pending: dict[Candidate, list[optuna.trial.Trial]] = {}
        self._asked = 0
        if seed_plans:
            for cand in self._seed_candidates():
                self.study.enqueue_trial(self._params(cand))

    def _seed_candidates(self) -> list[Candidate]:
        p = self.problem
        seeds = [solve_ilp(p, self.budget)]
        unit_options = next(s.options for s in p.slots if not s.is_subblock)
        fitting = [c for c in map(p.uniform, unit_options) if c is not None and p.satisfies(c, self.budget)]
        if fitting:
            seeds.append(min(fitting, key=p.proxy_score))
        return seeds

    def _params(self, cand: Candidate) -> dict[str, str]:
        # inactive slots (inside a dropped sub-block) take their first option, like the sampler may
        return {s.name: s.options[max(c, 0)] for s, c in zip(self.problem.slots, cand)}

    def _violations(self, cand: Candidate) -> dict[str, float]:
        out = {}
        for c in self.budget.constraints:
            achieved = self.problem.metric(cand, c.metric)
            scale = abs(c.value) or 1.0
            out[c.metric] = (achieved - c.value) / scale if c.sense == LE else (c.value - achieved) / scale
        return out

    def ask(self) -> list[EvalRequest]:
        requests: list[EvalRequest] = []
        attempts = 0
        while len(requests) < self.batch and self._asked < self.max_evaluations and attempts < self.max_attempts:
            attempts += 1
            trial = self.study.ask()
            cand = self.problem.canonical(
                [s.options.index(trial.suggest_categorical(s.name, list(s.options))) for s in self.problem.slots]
            )
            violations = self._violations(cand)
            for metric, v in violations.items():
                trial.set_constraint(metric, v)
            if not self.problem.satisfies(cand, self.budget):
                repaired = self.space.repair(cand)
                if repaired is None:
                    self.study.tell(trial, PENALTY * (1 + max(violations.values())))
                    continue
                cand = repaired
            if cand in self.scores:
                self._tell_value(trial, self.scores[cand])
            elif cand in self._pending:
                self._pending[cand].append(trial)
            else:
                self._pending[cand] = [trial]
                requests.append(EvalRequest(cand))
                self._asked += 1
        return requests

    def _tell_value(self, trial: optuna.trial.Trial, value: float) -> None:
        if math.isfinite(value):
            self.study.tell(trial, value)
        else:  # a broken candidate: quarantined as a failed trial
            self.study.tell(trial, state=TrialState.FAIL)

    def tell(self, evaluations: list[Evaluation]) -> None:
        for e in evaluations:
            self.scores[e.candidate] = e.fitness
            for trial in self._pending.pop(e.candidate, []):
                self._tell_value(trial, e.fitness)

    def result(self) -> Candidate:
        finite = {c: f for c, f in self.scores.items() if math.isfinite(f)}
        if not finite:
            raise LayerbudgetError("optuna found no feasible candidate with a finite fitness; raise max_evaluations")
        return min(finite, key=lambda c: (finite[c], c))
