"""Greedy skip-path search and calibrated skip profiles for AdaptiveDiffusion (plain PyTorch).

The paper's greedy "optimal skip path" (Ye et al., NeurIPS 2024, section 3 and Fig. 4/5/8a; the search is in
the paper only, not in the official release): for a target of K skips, start from the full path and K times
add the one skip whose reuse raises the error of the final result against the full run the least.

``greedy_skip_paths`` runs it for several prompts at once, in one of two ways:

* ``joint=True`` (calibration): one path shared by all prompts; a candidate's error is the mean over the
  prompts of log(error) (so the mean PSNR is what it maximises; ``reduce="mean"`` averages the errors
  themselves, which the worst prompt dominates). ``calibrate_path`` compares its path with the default's and
  the schedule planner's (``planner_paths``: the planner's settings, and its cost model calibrated on the
  greedy's first round) and runs a local search from the best; the result is a skip profile for a model,
  sampler, schedule and step count, applied later through ``AdaptiveConfig(mode="path")`` on prompts it
  never saw. With ``validate`` it also checks that: the search once more per calibration prompt with that
  prompt left out (``validate_search``), and the default's path kept where the searched paths do worse than it
  on the prompts they did not see.
* ``joint=False``: each prompt its own greedy path (the per-prompt optimum the profile is measured against).
  Every prompt has the same number of candidates each round, so the prompts share the batched runs.

All candidates of one round (up to ``max_batch`` sampled rows) run as one batch through the per-sample
path mode of the controller; the caller's ``errors_of`` does the sampling, so the same search serves the
testbed benchmark (one batch, a row per candidate and prompt) and ComfyUI's node (a sampling call per
prompt with ComfyUI's own sampler).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .adaptive_config import target_skips
from .skip_profile import RESPACED_DEFAULT

REDUCTIONS = ("log", "mean", "max")


class CalibrationError(ValueError):
    """A calibration setting is out of range; the message names it."""


@dataclass
class GreedyResult:
    path: torch.Tensor  # bool [N] (joint) or [P, N] (per prompt), True = the network runs
    errors: list[float] = field(default_factory=list)  # reduced final error after each added skip
    prompt_errors: list[float] = field(default_factory=list)  # each prompt's final error at the end
    greedy_path: torch.Tensor | None = None  # calibrate_path: the greedy's path before the local search
    start: str = ""  # calibrate_path: where the winning local search started ("greedy" or a start's name)
    first_round: torch.Tensor | None = None  # [N, P] each step's error when it alone is skipped (NaN: not tried)
    candidates: dict = field(default_factory=dict)  # calibrate_path: {name: reduced error} of the paths it compared
    candidate_prompt_errors: dict = field(default_factory=dict)  # calibrate_path: {name: each prompt's error}
    candidate_paths: dict = field(default_factory=dict)  # calibrate_path: {name: bool path [N]} of those paths
    respaced: bool = False  # calibrate_path: the path is run re-spaced (RESPACED_DEFAULT won)
    validation: dict = field(default_factory=dict)  # calibrate_path(validate=...): the leave-one-prompt-out check
    runs: int = 0  # batched sampling rounds made (calls of errors_of)
    rows: int = 0  # sampled rows (candidate x prompt) over the whole search

    def path_string(self, row: int | None = None) -> str:
        p = self.path if self.path.ndim == 1 else self.path[0 if row is None else row]
        return "".join("C" if c else "s" for c in p.tolist())


def skips_for_speedup(steps: int, target_speedup: float) -> int:
    """Skips that give `target_speedup` on `steps` steps (the controller's own count, mode target)."""
    if int(steps) != steps or steps < 1:
        raise CalibrationError(f"steps: expected an integer >= 1, got {steps!r}")
    if not (math.isfinite(target_speedup) and target_speedup >= 1.0):
        raise CalibrationError(f"target_speedup: expected a number >= 1.0, got {target_speedup!r}")
    return target_skips(int(steps), target_speedup)


def _reduce(errs: torch.Tensor, reduce: str) -> torch.Tensor:
    """[C, P] errors -> [C] (log: the geometric mean, so its log is the mean log error)."""
    errs = errs.double()
    if reduce == "log":
        return errs.clamp_min(1e-30).log().mean(1).exp()
    if reduce == "mean":
        return errs.mean(1)
    return errs.max(1).values


def greedy_skip_paths(
    errors_of: Callable[[torch.Tensor], torch.Tensor],
    n_prompts: int,
    n_steps: int,
    n_skips: int,
    *,
    joint: bool = True,
    reduce: str = "log",
    first_skippable: int = 1,
    last_skippable: int | None = None,
    max_batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> GreedyResult:
    """Greedy search for paths with `n_skips` skips over `n_prompts` prompts.

    errors_of(paths [C, P, N] bool) -> [C, P]: the error against its full run of prompt p sampled along
    paths[c, p] (lower is better). joint: one path for all prompts (the candidates' errors reduced over the
    prompts by `reduce`); else one path per prompt. Step 0 cannot be skipped (nothing to reuse yet);
    `first_skippable` may protect more, `last_skippable` (exclusive) protects the end.
    progress(rows done, rows in all) after each batch.
    """
    if reduce not in REDUCTIONS:
        raise CalibrationError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    if n_prompts < 1:
        raise CalibrationError(f"prompts: expected at least one, got {n_prompts}")
    first = max(1, int(first_skippable))
    last = n_steps if last_skippable is None else min(n_steps, int(last_skippable))
    eligible = max(0, last - first)
    if not 0 <= n_skips <= eligible:
        raise CalibrationError(
            f"skips: expected 0..{eligible} for {n_steps} steps (steps {first}..{last - 1} may skip), got {n_skips}"
        )
    paths = torch.ones(n_prompts, n_steps, dtype=torch.bool)
    per_chunk = max(1, max_batch // n_prompts)
    total_rows = sum(eligible - r for r in range(n_skips)) * n_prompts
    result = GreedyResult(path=paths)
    for _ in range(n_skips):
        # each prompt's candidates: its still-computed eligible steps (the same count for every prompt)
        cands = torch.stack([paths[p, first:last].nonzero().flatten() + first for p in range(n_prompts)], 1)
        errs = []
        for start in range(0, cands.shape[0], per_chunk):
            chunk = cands[start : start + per_chunk]  # [C, P]
            trial = paths.unsqueeze(0).repeat(chunk.shape[0], 1, 1)
            trial.scatter_(2, chunk.unsqueeze(2), False)
            e = torch.as_tensor(errors_of(trial)).double().reshape(chunk.shape[0], n_prompts)
            errs.append(e)
            result.runs += 1
            result.rows += chunk.numel()
            if progress is not None:
                progress(result.rows, total_rows)
        errs = torch.cat(errs)  # [C, P]
        if result.first_round is None:
            result.first_round = torch.full((n_steps, n_prompts), float("nan"), dtype=torch.float64)
            result.first_round[cands[:, 0]] = errs  # round one: the same single skips for every prompt
        if joint:
            red = _reduce(errs, reduce)
            best = int(red.argmin())
            paths[:, cands[best, 0]] = False
            result.errors.append(float(red[best]))
            result.prompt_errors = errs[best].tolist()
        else:
            best = errs.argmin(0)  # [P]
            rows = torch.arange(n_prompts)
            paths[rows, cands[best, rows]] = False
            chosen = errs[best, rows]
            result.errors.append(float(_reduce(chosen.unsqueeze(0), reduce)))
            result.prompt_errors = chosen.tolist()
    result.path = paths[0].clone() if joint else paths
    return result


def refine_skip_path(
    errors_of: Callable[[torch.Tensor], torch.Tensor],
    n_prompts: int,
    path: torch.Tensor,
    *,
    reduce: str = "log",
    reach: int = 2,
    max_passes: int = 4,
    first_skippable: int = 1,
    last_skippable: int | None = None,
    max_batch: int = 64,
) -> GreedyResult:
    """Local search after the greedy one: move one skip to a computed step at most `reach` steps away while
    that lowers the reduced error over the prompts (best move per pass, up to `max_passes`). The number of
    skips stays; errors_of as for ``greedy_skip_paths`` (joint paths)."""
    if reduce not in REDUCTIONS:
        raise CalibrationError(f"reduce: expected one of {REDUCTIONS}, got {reduce!r}")
    path = torch.as_tensor(path, dtype=torch.bool).clone()
    n = path.numel()
    first = max(1, int(first_skippable))
    last = n if last_skippable is None else min(n, int(last_skippable))
    result = GreedyResult(path=path)

    def evaluate(cands: list[torch.Tensor]) -> torch.Tensor:
        e, runs, rows = _joint_errors(errors_of, n_prompts, cands, max_batch)
        result.runs, result.rows = result.runs + runs, result.rows + rows
        return e

    for _ in range(max_passes):
        cands = [path.clone()]
        for i in range(first, last):
            if path[i]:
                continue
            for j in range(max(first, i - reach), min(last, i + reach + 1)):
                if path[j] and j != i:
                    c = path.clone()
                    c[i], c[j] = True, False
                    cands.append(c)
        errs = evaluate(cands)
        red = _reduce(errs, reduce)
        best = int(red.argmin())
        result.errors.append(float(red[best]))
        result.prompt_errors = errs[best].tolist()
        if best == 0 or not float(red[best]) < float(red[0]):
            break
        path = cands[best]
    result.path = path
    return result


#: the schedule planner's settings whose paths a calibration compares (``planner_paths``)
PLANNER_PENALTIES = (1.0, 3.0, 10.0, 30.0, 100.0)
PLANNER_STEP_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
PLANNER_PROTECT_LAST = (0, 1, 2, 3)


def planner_paths(sigmas, n_skips: int, *, flow: bool = False, single_errors=None, max_skip: int = 4) -> dict:
    """Candidate skip paths from the schedule planner (``samplers.skip_plan``) for a calibration to compare.

    * ``planner p{penalty} w{weight} last{k}``: the planner with each run penalty of PLANNER_PENALTIES, step
      weight of PLANNER_STEP_WEIGHTS and 0-3 protected last steps (the default's settings among them);
    * ``calibrated p{penalty}`` (single_errors [N]: each step's measured error when it alone is skipped, reduced
      over the prompts; NaN where not measured): a calibrated cost model, the planner with each step's modelled
      cost scaled by its measured over its modelled single-skip error (steps not measured keep the median
      scale), for each run penalty. It fits one number per step, averaged over the prompts, where the greedy
      chooses among all paths.

    Deduplicated (the first name wins); only paths with exactly n_skips skips."""
    from .skip_plan import plan_skips, skip_costs_fn

    n = len(sigmas) - 1
    out: dict = {}

    def add(name, path):
        if int((~path).sum()) == n_skips and not any(torch.equal(path, p) for p in out.values()):
            out[name] = path

    for pen in PLANNER_PENALTIES:
        for w in PLANNER_STEP_WEIGHTS:
            for k in PLANNER_PROTECT_LAST:
                path, _ = plan_skips(
                    sigmas, n_skips, max_skip=max_skip, last=n - k, flow=flow, run_penalty=pen, step_weight=w
                )
                add(f"planner p{pen:g} w{w:g} last{k}", path)
    if single_errors is not None:
        e = torch.as_tensor(single_errors, dtype=torch.float64).flatten()
        if e.numel() != n:
            raise CalibrationError(f"single_errors: expected {n} values (one per step), got {e.numel()}")
        cost = skip_costs_fn(sigmas, flow)
        modelled = torch.tensor([cost(i, i - 1, i - 2 if i >= 2 else None) if i else 0.0 for i in range(n)])
        ok = torch.isfinite(e) & (modelled > 0)
        if bool(ok.any()):
            scale = torch.where(ok, e / modelled.clamp_min(1e-300), torch.nan)
            scale = torch.where(ok, scale, scale[ok].median()).clamp_min(0.0)
            for pen in PLANNER_PENALTIES:
                path, _ = plan_skips(
                    sigmas, n_skips, max_skip=max_skip, flow=flow, run_penalty=pen, step_scale=scale.tolist()
                )
                add(f"calibrated p{pen:g}", path)
    return out


def calibrate_path(
    errors_of: Callable[[torch.Tensor], torch.Tensor],
    n_prompts: int,
    n_steps: int,
    n_skips: int,
    *,
    starts: dict | None = None,
    planner: dict | None = None,
    refine: bool = True,
    reach: int = 2,
    max_passes: int = 8,
    reduce: str = "log",
    max_batch: int = 64,
    progress: Callable[[int, int], None] | None = None,
    validate: Callable[[list[int]], Callable[[torch.Tensor], torch.Tensor]] | None = None,
    folds: list[list[int]] | None = None,
    respaced_errors_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
    quick: bool = False,
) -> GreedyResult:
    """A skip profile's path: the best, by the reduced error over the calibration prompts, of

    * the joint greedy search (the paper's);
    * the paths of `starts` ({name: bool path [N]} with the same skips, e.g. the default controller's path);
    * planner: {"sigmas": the run's sigmas, "flow": bool}: the schedule planner's paths over its settings and
      its calibrated cost model from the greedy's first round (``planner_paths``), at no further search cost
      than one batch of sampling;
    * refine: the local search (``refine_skip_path``) from the greedy's path and from the best of the others;
    * respaced_errors_of (errors_of, but each path run re-spaced: ``samplers.respace``): the default's path
      re-spaced, the candidate ``RESPACED_DEFAULT`` (no local search from it), for a sampler and schedule on which
      the uncalibrated default re-spaces; where it wins, the result is that path with ``respaced`` True.

    errors: the greedy's error after each skip, then the winner's after each pass of its local search;
    ``start`` names where the winner started ("greedy", a key of `starts` or a planner path's name),
    ``candidates`` the reduced error of every path compared before the local search.

    validate(rows) -> errors_of over those prompts only: check that the search carries over to prompts it did
    not see (``validate_search``: each prompt left out in turn, P - 1 more searches) and return the path of
    ``starts["default"]`` instead where the searched path's error on the left-out prompts is no lower than the
    default's; ``validation`` records both, the choice and the searched path. folds: the rows left out together
    (default each alone); where ``respaced_errors_of`` is given the fallback is the default as it runs, re-spaced.

    quick: only the greedy's first round (each step skipped alone: what the calibrated cost model needs), then the
    best of `starts` and the planner's paths (planner required), without the greedy's further rounds and without
    the local search (refine is ignored): ``greedy_path`` is None and ``start`` the winner's name. A candidate for
    a cheaper calibration (``comfyui-tempo bench adaptive --grid --calib-quick``), not what the nodes run."""
    if quick and planner is None:
        raise CalibrationError("quick: the quick search picks among the planner's paths; give planner (the sigmas)")
    if validate is not None:
        return _validated(
            errors_of,
            n_prompts,
            n_steps,
            n_skips,
            validate,
            folds=folds,
            starts=starts,
            planner=planner,
            refine=refine,
            reach=reach,
            max_passes=max_passes,
            reduce=reduce,
            max_batch=max_batch,
            progress=progress,
            respaced_errors_of=respaced_errors_of,
        )
    g = greedy_skip_paths(
        errors_of,
        n_prompts,
        n_steps,
        min(n_skips, 1) if quick else n_skips,
        joint=True,
        reduce=reduce,
        max_batch=max_batch,
        progress=progress,
    )
    g.greedy_path, g.start = g.path, "greedy"
    if n_skips == 0:
        return g
    others: dict = {}
    for name, path in (starts or {}).items():
        path = torch.as_tensor(path, dtype=torch.bool).flatten()
        if path.numel() == n_steps and bool(path[0]) and int((~path).sum()) == n_skips:
            others.setdefault(str(name), path)
    if planner is not None:
        single = _reduce_rows(g.first_round, reduce) if g.first_round is not None else None
        for name, path in planner_paths(
            planner["sigmas"], n_skips, flow=bool(planner.get("flow")), single_errors=single
        ).items():
            others.setdefault(name, path)
    scored = {} if quick else {"greedy": (float(g.errors[-1]), g.path, list(g.prompt_errors))}
    for name in [k for k, p in others.items() if not quick and torch.equal(p, g.path)]:
        scored[name] = scored["greedy"]  # the greedy's own path under another name (e.g. the default's)
        del others[name]
    if not scored and not others:
        raise CalibrationError(f"quick: no start or planner path has {n_skips} skips to compare")
    runs, rows = g.runs, g.rows
    if others:
        e, nr, nrows = _joint_errors(errors_of, n_prompts, list(others.values()), max_batch)
        runs, rows = runs + nr, rows + nrows
        red = _reduce(e, reduce)
        for j, name in enumerate(others):
            scored[name] = (float(red[j]), others[name], e[j].tolist())
    default = (starts or {}).get("default")
    if respaced_errors_of is not None and default is not None:
        path = torch.as_tensor(default, dtype=torch.bool).flatten()
        e, nr, nrows = _joint_errors(respaced_errors_of, n_prompts, [path], max_batch)
        runs, rows = runs + nr, rows + nrows
        scored[RESPACED_DEFAULT] = (float(_reduce(e, reduce)[0]), path, e[0].tolist())
    best_name = min(scored, key=lambda k: scored[k][0])
    if quick:
        err, path, prompt_errors = scored[best_name]
        out = _with(g, path, best_name, g.errors + [err], prompt_errors, scored, runs, rows)
        out.greedy_path = None
        return out
    if not refine or best_name == RESPACED_DEFAULT:
        err, path, prompt_errors = scored[best_name]
        return _with(
            g, path, best_name, g.errors + ([err] if best_name != "greedy" else []), prompt_errors, scored, runs, rows
        )
    begin = ["greedy"]
    best_other = min((k for k in others if k in scored), key=lambda k: scored[k][0], default=None)
    if best_other is not None:
        begin.append(best_other)
    best = None
    for name in begin:
        r = refine_skip_path(
            errors_of,
            n_prompts,
            scored[name][1],
            reduce=reduce,
            reach=reach,
            max_passes=max_passes,
            max_batch=max_batch,
        )
        runs, rows = runs + r.runs, rows + r.rows
        r.start = name
        if best is None or r.errors[-1] < best.errors[-1]:
            best = r
    if RESPACED_DEFAULT in scored and scored[RESPACED_DEFAULT][0] < best.errors[-1]:
        err, path, prompt_errors = scored[RESPACED_DEFAULT]
        return _with(g, path, RESPACED_DEFAULT, g.errors + best.errors + [err], prompt_errors, scored, runs, rows)
    return _with(g, best.path, best.start, g.errors + best.errors, best.prompt_errors, scored, runs, rows)


def search_label(g: GreedyResult, refined: bool) -> str:
    """Where a calibrated path came from, for the profile's `search` field: the winner's start ("+local" after
    the local search), or the default's path kept by the leave-one-prompt-out check."""
    if g.validation.get("chosen") == "default":
        return f"{g.start} (the search lost on left-out prompts)"
    if g.respaced:
        return g.start
    return f"{g.start}+local" if refined else g.start


def validate_search(
    validate: Callable[[list[int]], Callable[[torch.Tensor], torch.Tensor]],
    n_prompts: int,
    n_steps: int,
    n_skips: int,
    fallback: torch.Tensor,
    *,
    folds: list[list[int]] | None = None,
    reduce: str = "log",
    fallback_errors: list[float] | None = None,
    **search,
) -> dict:
    """Leave-one-prompt-out check of ``calibrate_path`` (with the settings `search`): for each calibration
    prompt i, the search on the other prompts and its path's error on prompt i, beside the `fallback` path's
    error on the same prompts. validate(rows) -> errors_of over those prompts (rows index the calibration
    prompts). Returns {"left_out_search": [P], "left_out_fallback": [P], "search": reduced, "fallback":
    reduced, "gain_db": 10 log10(fallback / search) with reduce "log" (the mean PSNR gain on left-out
    prompts), "fold_paths": a path string per fold}. folds: the rows left out together (default: each row
    alone; e.g. a prompt's seeds, so that a fold never sees the prompt it is checked on). fallback_errors: the
    fallback's error per prompt where already measured (the default run re-spaced: not a skip path of validate's)."""
    folds = [[i] for i in range(n_prompts)] if folds is None else [list(f) for f in folds]
    if sorted(r for f in folds for r in f) != list(range(n_prompts)) or any(not f for f in folds):
        raise CalibrationError(f"folds: expected a partition of the {n_prompts} prompts' rows, got {folds!r}")
    if len(folds) < 2:
        raise CalibrationError(f"prompts: the leave-one-out check needs at least two folds, got {len(folds)}")
    fallback = torch.as_tensor(fallback, dtype=torch.bool).flatten()
    paths = torch.empty(n_prompts, n_steps, dtype=torch.bool)
    fold_paths = []
    for fold in folds:
        others = [j for j in range(n_prompts) if j not in fold]
        g = calibrate_path(validate(others), len(others), n_steps, n_skips, reduce=reduce, **search)
        paths[fold] = g.path
        fold_paths.append(g.path_string())
    if fallback_errors is None:
        trial = torch.stack([paths, fallback.expand(n_prompts, -1)])  # [2, P, N]: each row gets its fold's path
        errs = torch.as_tensor(validate(list(range(n_prompts)))(trial)).double().reshape(2, n_prompts)
    else:  # the fallback's errors are known (it is one fixed path, e.g. the default run re-spaced)
        searched = torch.as_tensor(validate(list(range(n_prompts)))(paths.unsqueeze(0))).double().reshape(n_prompts)
        errs = torch.stack([searched, torch.as_tensor(fallback_errors, dtype=torch.float64).reshape(n_prompts)])
    red = _reduce(errs, reduce)
    gain = 10.0 * math.log10(float(red[1]) / float(red[0])) if reduce == "log" and float(red[0]) > 0 else None
    return {
        "left_out_search": errs[0].tolist(),
        "left_out_fallback": errs[1].tolist(),
        "search": float(red[0]),
        "fallback": float(red[1]),
        "gain_db": gain,
        "fold_paths": fold_paths,
    }


def _validated(errors_of, n_prompts, n_steps, n_skips, validate, *, folds, starts, **search) -> GreedyResult:
    """calibrate_path with validate: the search, then validate_search against the default's path."""
    g = calibrate_path(errors_of, n_prompts, n_steps, n_skips, starts=starts, **search)
    fallback = (starts or {}).get("default")
    if fallback is None:
        raise CalibrationError("validate: needs starts['default'], the path to fall back to")
    if n_skips == 0 or (len(folds) if folds is not None else n_prompts) < 2:
        g.validation = {"chosen": "search", "note": "not checked: it needs two or more prompts and some skips"}
        return g
    if g.respaced:
        g.validation = {"chosen": "search", "note": "not checked: the default itself (re-spaced) won the search"}
        return g
    search.pop("progress", None)
    search.pop("respaced_errors_of", None)  # its prompts are all of them; the folds compare skip paths
    # where the default re-spaces, the fallback is measured as it runs (its errors are the candidate's)
    known = g.candidate_prompt_errors.get(RESPACED_DEFAULT)
    v = validate_search(
        validate, n_prompts, n_steps, n_skips, fallback, folds=folds, starts=starts, fallback_errors=known, **search
    )
    if known is not None:
        v["fallback_respaced"] = True
    v["searched_path"] = g.path_string()
    v["chosen"] = "search" if v["search"] < v["fallback"] else "default"
    if v["chosen"] == "default":  # the default as it runs: re-spaced where respaced_errors_of was given
        name = RESPACED_DEFAULT if RESPACED_DEFAULT in g.candidates else "default"
        err = g.candidates.get(name)
        g = replace(
            g,
            path=torch.as_tensor(fallback, dtype=torch.bool).flatten(),
            errors=g.errors + ([err] if err is not None else []),
            prompt_errors=list(g.candidate_prompt_errors.get(name, [])),
            start=name,
            respaced=name == RESPACED_DEFAULT,
        )
    g.validation = v
    return g


def _reduce_rows(errs: torch.Tensor, reduce: str) -> torch.Tensor:
    """[N, P] with NaN rows (not measured) -> [N], NaN kept."""
    out = torch.full((errs.shape[0],), float("nan"), dtype=torch.float64)
    ok = ~torch.isnan(errs).any(1)
    if bool(ok.any()):
        out[ok] = _reduce(errs[ok], reduce)
    return out


def _joint_errors(errors_of, n_prompts: int, paths: list, max_batch: int):
    """[C, P] errors of joint paths (each for every prompt), in batches of at most max_batch rows."""
    per_chunk = max(1, max_batch // n_prompts)
    errs, runs, rows = [], 0, 0
    for start in range(0, len(paths), per_chunk):
        chunk = torch.stack(paths[start : start + per_chunk])
        trial = chunk.unsqueeze(1).expand(-1, n_prompts, -1).clone()
        errs.append(torch.as_tensor(errors_of(trial)).double().reshape(chunk.shape[0], n_prompts))
        runs, rows = runs + 1, rows + chunk.shape[0] * n_prompts
    return torch.cat(errs), runs, rows


def _with(g: GreedyResult, path, start, errors, prompt_errors, scored, runs, rows) -> GreedyResult:
    return GreedyResult(
        respaced=start == RESPACED_DEFAULT,
        path=path,
        errors=errors,
        prompt_errors=prompt_errors,
        greedy_path=g.path,
        start=start,
        first_round=g.first_round,
        candidates={k: v[0] for k, v in scored.items()},
        candidate_prompt_errors={k: list(v[2]) for k, v in scored.items()},
        candidate_paths={k: v[1].clone() for k, v in scored.items()},
        runs=runs,
        rows=rows,
    )


def greedy_skip_path(
    run_paths: Callable[[torch.Tensor], torch.Tensor],
    n_steps: int,
    n_skips: int,
    error: Callable[[torch.Tensor], torch.Tensor],
    first_skippable: int = 1,
    last_skippable: int | None = None,
    max_batch: int = 64,
) -> GreedyResult:
    """The greedy path of one fixed noise and conditioning: run_paths(paths [B, N]) -> results [B, ...],
    error(results) -> [B] against the full run."""
    return greedy_skip_paths(
        lambda trial: error(run_paths(trial[:, 0])).reshape(-1, 1),
        1,
        n_steps,
        n_skips,
        first_skippable=first_skippable,
        last_skippable=last_skippable,
        max_batch=max_batch,
    )


def vote_path(paths: torch.Tensor, n_skips: int, first_skippable: int = 1) -> torch.Tensor:
    """One path from several prompts' greedy paths [P, N]: skip the `n_skips` steps skipped most often
    (ties to the later step, where skipping is cheaper). The cheap alternative to the joint search."""
    paths = torch.as_tensor(paths, dtype=torch.bool)
    n = paths.shape[-1]
    votes = (~paths).reshape(-1, n).float().sum(0)
    votes[: max(1, first_skippable)] = -1
    order = sorted(range(n), key=lambda i: (-float(votes[i]), -i))
    path = torch.ones(n, dtype=torch.bool)
    path[[i for i in order[:n_skips] if votes[i] >= 0]] = False
    return path
