"""Calibrated skip profiles on the bundled testbed: `comfyui-tempo adaptive calibrate` and the benchmark rows.

The profile is the joint greedy path (``samplers.calibrate``) over a few calibration prompts (classes); it
is measured on held-out prompts as decoded PSNR against each prompt's full run (the paper's protocol),
against each held-out prompt's own greedy path at the same number of skips (``greedy_optimal``), the
pack's default controller at the same NFE (``adaptive``) and fewer steps (``fewer_steps``).
"""

from __future__ import annotations

import math
import re
import time

import torch

from ..samplers import kdiff, schedules, support
from ..samplers.adaptive import EXTRAPOLATIONS, AdaptiveConfig, adaptive_sample
from ..samplers.calibrate import calibrate_path, greedy_skip_paths, search_label, skips_for_speedup, vote_path
from ..samplers.respace import auto_respace, default_path_as_run
from ..samplers.skip_profile import RESPACED_DEFAULT, SkipProfile, save_profile
from ..testbed.problems import Problem
from .common import print_table, psnr_db, write_json

COLUMNS = ["sampler", "scheduler", "steps", "method", "nfe", "psnr_db", "calib_nfe", "calib_wall_s", "path"]


def _cfg_of(problem: Problem):
    m = re.search(r"CFG ([0-9.]+)", problem.name)
    return float(m.group(1)) if m else None


def _is_flow(problem: Problem) -> bool:
    """A flow problem: the controller must know (its time variable and auto extrapolation), as the nodes tell it
    from ComfyUI's CONST model sampling."""
    return schedules.is_flow(getattr(problem, "sampling", None))


class _Runner:
    """Samples rows of a problem along per-row skip paths; counts the network evaluations per image."""

    def __init__(self, problem: Problem, sampler: str, steps: int, extrapolation: str):
        self.p, self.sampler, self.steps, self.extrapolation = problem, sampler, steps, extrapolation
        self.sig = problem.sigmas(steps)
        self.nfe = 0.0

    def run(self, rows: torch.Tensor, paths: torch.Tensor | None, respace: bool = False) -> torch.Tensor:
        """Final latents of the problem's rows `rows` (indices, repeats allowed) along paths [B, N] (None: full)."""
        x = self.p.noise[rows] * self.sig[0]
        extra = {"cond": self.p.cond[rows]}
        fn = kdiff.SAMPLERS[self.sampler]
        if paths is None:
            paths = torch.ones(len(rows), self.steps, dtype=torch.bool)
        cfg = AdaptiveConfig(
            mode="path", path=paths, extrapolation=self.extrapolation, respace="on" if respace else "off"
        )
        out, rep = adaptive_sample(
            fn,
            self.p.denoiser,
            x,
            self.sig,
            cfg,
            extra_args=extra,
            **support.adaptive_kwargs(self.sampler),
            vp_estimator_ok=not _is_flow(self.p),
        )
        self.nfe += sum(rep.nfe_per_sample)
        return out

    def errors_of(self, idx: torch.Tensor, ref_img: torch.Tensor, respace: bool = False):
        """errors_of for greedy_skip_paths over the prompts idx: decoded MSE against ref_img [P, ...] (respace: each
        candidate run re-spaced, one call per candidate)."""

        def errors_of(trial):  # [C, P, N]
            c, p, n = trial.shape
            if respace:
                out = torch.cat([self.run(idx, trial[j], respace=True) for j in range(c)])
            else:
                out = self.run(idx.repeat(c), trial.reshape(c * p, n))
            img = self.p.decode(out)
            return ((img - ref_img.repeat(c, 1, 1, 1)) ** 2).flatten(1).mean(1).reshape(c, p)

        return errors_of


def calibrate(
    problem: Problem,
    sampler: str,
    steps: int,
    skips: int,
    calib_idx,
    extrapolation: str = "auto",
    reduce: str = "log",
    max_batch: int = 64,
    refine: bool = True,
    planner: bool = True,
    starts: dict | None = None,
    validate: bool = False,
    record: dict | None = None,
    quick: bool = False,
) -> SkipProfile:
    """The profile over the problem's rows calib_idx (decoded-image error): the best of the joint greedy path,
    the default's and the schedule planner's paths (``calibrate_path``; refine: then the local search), with
    its cost. planner=False: without the planner's paths (the search before they were added). starts: more
    paths to compare ({name: bool path}). validate: the leave-one-prompt-out check (falls back to the default's
    path where the search does not carry over to the left-out prompts). record (a dict, filled here): "paths", every
    path with the profile's skips the search sampled, as a path string -> each calibration prompt's error along it,
    "candidates", the paths it compared before its local search ({name: (path string, errors)}), and "pre_local",
    the name of the one it chose among them. quick: the quick search (``calibrate_path(quick=True)``; needs planner)."""
    t0 = time.perf_counter()
    r = _Runner(problem, sampler, steps, extrapolation)
    idx = torch.as_tensor(calib_idx)
    ref = problem.decode(r.run(idx, None))
    starts = {
        **(
            {"default": _default_path(problem, sampler, steps, skips, idx, extrapolation, r)}
            if refine or validate
            else {}
        ),
        **(starts or {}),
    }
    # where the uncalibrated default re-spaces (respace auto) it competes as it runs, re-spaced (as in the node)
    rule = support.lookup(sampler).respace
    respaced = auto_respace(rule, _is_flow(problem), r.sig, steps - skips)[0]
    if respaced and "default" in starts:  # the default as it runs (a spreading rule runs other steps than planned)
        starts["default"] = default_path_as_run(rule, r.sig, starts["default"])
    errors_of = r.errors_of(idx, ref)
    if record is not None:
        errors_of = _recording(errors_of, skips, record.setdefault("paths", {}))
    g = calibrate_path(
        errors_of,
        len(idx),
        steps,
        skips,
        starts=starts,
        respaced_errors_of=r.errors_of(idx, ref, respace=True) if respaced and "default" in starts else None,
        planner={"sigmas": r.sig, "flow": _is_flow(problem)} if planner else None,
        refine=refine,
        reduce=reduce,
        max_batch=max_batch,
        validate=(lambda rows: r.errors_of(idx[rows], ref[rows])) if validate else None,
        quick=quick,
    )
    if record is not None:
        record["candidates"] = {
            name: (_text(path), list(g.candidate_prompt_errors[name])) for name, path in g.candidate_paths.items()
        }
        record["pre_local"] = min(g.candidates, key=g.candidates.get)  # the search's own choice before its local search
    return SkipProfile(
        path=g.path.tolist(),
        sigmas=[float(s) for s in r.sig],
        sampler=sampler,
        scheduler=problem.scheduler,
        extrapolation=extrapolation,
        model=problem.name,
        cfg=_cfg_of(problem),
        prompts=len(idx),
        metric="image_mse",
        reduce=reduce,
        search=search_label(g, bool(refine and skips and not quick)) + (" (quick search)" if quick else ""),
        greedy_path=g.greedy_path.tolist() if g.greedy_path is not None else [],
        calib_nfe=r.nfe,
        calib_wall_s=time.perf_counter() - t0,
        errors=g.errors,
        prompt_errors=g.prompt_errors,
        candidates=g.candidates,
        validation=g.validation,
        respace=g.respaced,
    )


def _text(path) -> str:
    return "".join("C" if c else "s" for c in torch.as_tensor(path, dtype=torch.bool).tolist())


def _recording(errors_of, skips: int, paths: dict):
    """errors_of that also keeps, for every joint candidate with `skips` skips, its path string -> the prompts'
    errors (the first measurement of a path wins; the search measures each path the same way each time)."""

    def recorded(trial):
        e = errors_of(trial)
        for c in range(trial.shape[0]):
            if int((~trial[c, 0]).sum()) == skips:
                paths.setdefault(_text(trial[c, 0]), [float(v) for v in e[c]])
        return e

    return recorded


def _default_path(problem: Problem, sampler: str, steps: int, skips: int, idx, extrapolation: str, runner=None):
    """The path the pack's default controller takes at the same skips (on the first of the prompts idx)."""
    sig = problem.sigmas(steps)
    one = torch.as_tensor(idx)[:1]
    cfg = AdaptiveConfig(target_speedup=steps / max(1, steps - skips), extrapolation=extrapolation)
    _, rep = adaptive_sample(
        kdiff.SAMPLERS[sampler],
        problem.denoiser,
        problem.noise[one] * sig[0],
        sig,
        cfg,
        extra_args={"cond": problem.cond[one]},
        **support.adaptive_kwargs(sampler),
        vp_estimator_ok=not _is_flow(problem),
    )
    if runner is not None:
        runner.nfe += sum(rep.nfe_per_sample)
    return torch.tensor([rec.mask[0] for rec in rep.records], dtype=torch.bool)


#: calibration_rows(moves=True): the run-time signals and thresholds of the profile's per-prompt moves
MOVE_SIGNALS = ("lagged", "local")
MOVE_TAUS = (0.25, 0.5, 1.0)


def reuse_signals(problem: Problem, sampler: str, steps: int, idx) -> dict[str, torch.Tensor]:
    """Each prompt's log reuse error per step from its full run, [N, P] per signal (NaN where there is none).
    ``local``: at step k, the error of d = (x - x0) / sigma extrapolated linearly in log sigma from steps k - 2 and
    k - 1 (what a skip of k alone reuses: no run has it before it computes k; what a signal of this kind could tell at
    best); ``lagged``: the same error at step k - 1, what a run has seen when it decides step k (here from the full
    run, cleaner than a skipping run sees it; ``moved_paths`` moving a skip from k + 1 to k reads it at k + 1, one
    step before a run has it). Samplers with one network evaluation per step only."""
    sig = problem.sigmas(steps)
    idx = torch.as_tensor(idx)
    calls = []

    def recording(x, sigma, **kw):
        out = problem.denoiser(x, sigma, **kw)
        calls.append((x, float(torch.as_tensor(sigma).flatten()[0]), out))
        return out

    kdiff.SAMPLERS[sampler](recording, problem.noise[idx] * sig[0], sig, extra_args={"cond": problem.cond[idx]})
    if len(calls) != steps:
        raise ValueError(
            f"sampler: the per-prompt moves need one network evaluation per step; {sampler} made {len(calls)} "
            f"in {steps} steps"
        )
    d = torch.stack([(x - x0) / s for x, s, x0 in calls]).double()
    t = torch.tensor([s for _, s, _ in calls], dtype=torch.float64).log()
    local = torch.full((steps, len(idx)), float("nan"), dtype=torch.float64)
    for k in range(2, steps):
        pred = d[k - 1] + (t[k] - t[k - 1]) / (t[k - 1] - t[k - 2]) * (d[k - 1] - d[k - 2])
        local[k] = (pred - d[k]).flatten(1).norm(dim=1).clamp_min(1e-30).log()
    lagged = torch.full_like(local, float("nan"))
    lagged[1:] = local[:-1]
    return {"lagged": lagged, "local": local}


def moved_paths(path, z: torch.Tensor, tau: float) -> tuple[torch.Tensor, list[int]]:
    """A shared path [N] (True = the network runs) moved per prompt by one step where its signal says so: z [P, N],
    each prompt's signal minus the calibration prompts' mean at each step (NaN: none). Walking from step 1, a skip
    at k before a computed k + 1 moves to k + 1 where z[k] - z[k + 1] > tau (skipping k costs this prompt more,
    against the calibration prompts, than skipping k + 1), and a computed k before a skip at k + 1 moves that skip
    to k where z[k + 1] - z[k] > tau; a swapped pair is not looked at again, so a skip moves one step at most.
    The number of skips never changes. Returns ([P, N] paths, moves per prompt)."""
    path = torch.as_tensor(path, dtype=torch.bool).flatten()
    n = path.numel()
    rows, counts = [], []
    for zr in torch.as_tensor(z, dtype=torch.float64).reshape(-1, n):
        c, k, moved = path.clone(), 1, 0
        while k < n - 1:
            a, b = float(zr[k]), float(zr[k + 1])
            if math.isfinite(a) and math.isfinite(b) and c[k] != c[k + 1]:
                if (not c[k] and a - b > tau) or (c[k] and b - a > tau):
                    c[k], c[k + 1] = c[k + 1].clone(), c[k].clone()
                    moved += 1
                    k += 2
                    continue
            k += 1
        rows.append(c)
        counts.append(moved)
    return torch.stack(rows), counts


def _psnr(problem: Problem, out: torch.Tensor, ref_img: torch.Tensor) -> torch.Tensor:
    """Each image's decoded PSNR (dB) against its reference, in batch order."""
    return psnr_db(problem.decode(out), ref_img)


def _row_head(problem: Problem, sampler: str, steps: int, skips: int) -> dict:
    """The fields every calibration and transfer row starts with."""
    return {
        "model": problem.name,
        "sampler": sampler,
        "scheduler": problem.scheduler,
        "steps": steps,
        "cfg": _cfg_of(problem),
        "skips": skips,
    }


def calibration_rows(
    problem: Problem,
    sampler: str,
    steps: int,
    skips: int,
    calib_idx,
    heldout_idx,
    extrapolation: str = "auto",
    baselines: bool = False,
    log=None,
    profile: SkipProfile | None = None,
    vote: bool = False,
    planner: bool = True,
    ceiling: bool = False,
    validate: bool = False,
    oracle: bool = False,
    moves: bool = False,
    quick: bool = False,
) -> list[dict]:
    """Rows `adaptive_calibrated` (the joint greedy profile of calib_idx) and `greedy_optimal` (each held-out
    prompt's own greedy path at the same skips), as mean decoded PSNR vs the full run over heldout_idx.
    baselines: also `adaptive_calibrated_greedy` (the joint greedy path before the local search), `adaptive`
    (the default controller at the same NFE) and `fewer_steps`; vote: `adaptive_calibrated_vote` (the steps
    the calibration prompts' own greedy paths skip most often); ceiling: `adaptive_shared_best` (the same search
    run on the held-out prompts themselves, the profile's path among its candidates: the best one shared path
    found for them, in-sample, never below the profile there). oracle: how far choosing among the search's paths can
    go: `adaptive_searched_best`, the best on the held-out prompts of every path the search sampled (picked with
    hindsight: no rule can do better with these paths) and `adaptive_calibrated_nolocal` (the search's choice before
    its local search). moves: `adaptive_calibrated_moved_<signal>_<tau>`, the profile's path moved per held-out prompt
    by a run-time signal (``reuse_signals``, ``moved_paths``; every signal of MOVE_SIGNALS and tau of MOVE_TAUS; not
    where the profile re-spaces). quick: `adaptive_calibrated_quick`, the profile of the quick search (the greedy's first
    round and the planner's paths; ``calibrate_path(quick=True)``) on the same prompts. profile: one calibrate() made
    already for these settings (else it is made here; not with oracle, which records the search)."""
    heldout = torch.as_tensor(heldout_idx)
    if oracle and profile is not None:
        raise ValueError("oracle: records the calibration's search, so the profile is made here; leave profile out")
    record: dict | None = {} if oracle else None
    prof = profile or calibrate(
        problem, sampler, steps, skips, calib_idx, extrapolation, planner=planner, validate=validate, record=record
    )
    r = _Runner(problem, sampler, steps, extrapolation)
    ref = problem.decode(r.run(heldout, None))
    base = {**_row_head(problem, sampler, steps, skips), "heldout": len(heldout), "calib_prompts": prof.prompts}
    rows = []

    def add(method, nfe, psnr, path="", **more):  # psnr: a number, or each held-out image's (their mean is psnr_db)
        images = [round(float(v), 4) for v in psnr] if isinstance(psnr, torch.Tensor) else None
        psnr = float(psnr.mean()) if isinstance(psnr, torch.Tensor) else float(psnr)
        row = {**base, "method": method, "nfe": float(nfe), "psnr_db": psnr, "path": path, **more}
        if images is not None:
            row["psnr_images_db"] = images  # held-out images in heldout_idx's order: what paired_se pairs
        rows.append(row)
        if log:
            log(
                f"  {sampler:9s} {problem.scheduler:7s} {steps:3d} {method:26s} nfe {nfe:6.2f}  psnr {psnr:6.2f} dB  {path}"
            )

    n_net = steps - skips

    def along(method, path, text, respace=False, **more):  # every held-out prompt sampled along one path
        nfe0 = r.nfe
        out = r.run(heldout, torch.as_tensor(path, dtype=torch.bool).repeat(len(heldout), 1), respace=respace)
        add(method, (r.nfe - nfe0) / len(heldout), _psnr(problem, out, ref), text, **more)

    def along_profile(method, p: SkipProfile):  # a profile's path on every held-out prompt, with its calibration's cost
        along(
            method,
            p.path,
            p.path_string() + (" (re-spaced)" if p.respace else ""),
            respace=p.respace,
            calib_nfe=p.calib_nfe,
            calib_wall_s=p.calib_wall_s,
            search=p.search,
            calib_gain_db=p.gain_over_default_db(),
        )

    along_profile("adaptive_calibrated", prof)
    if quick:
        along_profile(
            "adaptive_calibrated_quick",
            calibrate(problem, sampler, steps, skips, calib_idx, extrapolation, validate=validate, quick=True),
        )
    if prof.validation.get("searched_path"):
        text = prof.validation["searched_path"]
        along(
            "adaptive_calibrated_unchecked",
            [c == "C" for c in text],
            text,
            left_out_gain_db=prof.validation.get("gain_db"),
            chosen=prof.validation.get("chosen"),
        )
    t0 = time.perf_counter()
    nfe0 = r.nfe
    g = greedy_skip_paths(r.errors_of(heldout, ref), len(heldout), steps, skips, joint=False)
    search_nfe = r.nfe - nfe0
    nfe0 = r.nfe
    out = r.run(heldout, g.path)
    add(
        "greedy_optimal",
        (r.nfe - nfe0) / len(heldout),
        _psnr(problem, out, ref),
        g.path_string(0) + (" (first held-out prompt)" if len(heldout) > 1 else ""),
        calib_nfe=search_nfe,
        calib_wall_s=time.perf_counter() - t0,
    )
    if ceiling:
        best = calibrate(
            problem, sampler, steps, skips, heldout_idx, extrapolation, planner=planner, starts={"profile": prof.path}
        )
        along(
            "adaptive_shared_best",
            best.path,
            best.path_string(),
            calib_nfe=best.calib_nfe,
            calib_wall_s=best.calib_wall_s,
            search=best.search,
        )
    if record is not None:
        _oracle_rows(record, r, heldout, ref, add, along)
    if moves and not prof.respace:
        cidx = torch.as_tensor(calib_idx)
        signals = reuse_signals(problem, sampler, steps, torch.cat([cidx, heldout]))
        for name in MOVE_SIGNALS:
            s = signals[name]
            z = (s[:, len(cidx) :] - s[:, : len(cidx)].mean(1, keepdim=True)).T  # [held-out prompts, N]
            for tau in MOVE_TAUS:
                paths, counts = moved_paths(prof.path, z, tau)
                nfe0 = r.nfe
                out = r.run(heldout, paths)
                add(
                    f"adaptive_calibrated_moved_{name}_{tau:g}",
                    (r.nfe - nfe0) / len(heldout),
                    _psnr(problem, out, ref),
                    _text(paths[0]) + (" (first held-out prompt)" if len(heldout) > 1 else ""),
                    signal=name,
                    tau=tau,
                    moves=counts,
                )
    if baselines and prof.greedy_path:
        along("adaptive_calibrated_greedy", prof.greedy_path, "".join("C" if c else "s" for c in prof.greedy_path))
    if vote:
        t0 = time.perf_counter()
        rc = _Runner(problem, sampler, steps, extrapolation)
        cidx = torch.as_tensor(calib_idx)
        cref = problem.decode(rc.run(cidx, None))
        gc = greedy_skip_paths(rc.errors_of(cidx, cref), len(cidx), steps, skips, joint=False)
        vpath = vote_path(gc.path, skips)
        along(
            "adaptive_calibrated_vote",
            vpath,
            "".join("C" if c else "s" for c in vpath.tolist()),
            calib_nfe=rc.nfe,
            calib_wall_s=time.perf_counter() - t0,
        )
    if baselines:
        x = problem.noise[heldout] * r.sig[0]
        cfg = AdaptiveConfig(target_speedup=steps / n_net, extrapolation=extrapolation)
        out, rep = adaptive_sample(
            kdiff.SAMPLERS[sampler],
            problem.denoiser,
            x,
            r.sig,
            cfg,
            extra_args={"cond": problem.cond[heldout]},
            **support.adaptive_kwargs(sampler),
            vp_estimator_ok=not _is_flow(problem),
        )
        add("adaptive", rep.nfe, _psnr(problem, out, ref), rep.path_string())
        sig_f = problem.sigmas(n_net)
        out = kdiff.SAMPLERS[sampler](
            problem.denoiser, problem.noise[heldout] * sig_f[0], sig_f, extra_args={"cond": problem.cond[heldout]}
        )
        per_step = 2 if support.lookup(sampler).endpoint_corrector else 1
        add("fewer_steps", max(1, n_net * per_step - (per_step - 1)), _psnr(problem, out, ref), f"{n_net} steps")
    return rows


def _oracle_rows(record: dict, r: _Runner, heldout: torch.Tensor, ref: torch.Tensor, add, along) -> None:
    """calibration_rows(oracle=True): every skip path the search sampled, on the held-out prompts (one batch per 32
    paths; the re-spaced default, a candidate where the default re-spaces, is not among them); the best of them, and
    the search's choice before its local search."""
    name = record["pre_local"]
    text = record["candidates"][name][0]
    along(
        "adaptive_calibrated_nolocal", [c == "C" for c in text], text, respace=name == RESPACED_DEFAULT, candidate=name
    )
    texts = list(record["paths"])
    held: dict = {}
    nfe0, p = r.nfe, len(heldout)
    for i in range(0, len(texts), 32):
        chunk = texts[i : i + 32]
        paths = torch.tensor([[c == "C" for c in t] for t in chunk], dtype=torch.bool)
        img = r.p.decode(r.run(heldout.repeat(len(chunk)), paths.repeat_interleave(p, 0)))
        db = psnr_db(img, ref.repeat(len(chunk), 1, 1, 1)).reshape(len(chunk), p).mean(1)
        held.update({t: float(v) for t, v in zip(chunk, db)})
    best = max(held, key=held.get)
    calib = torch.tensor([_mean_log(record["paths"][t]) for t in texts], dtype=torch.float64)
    out = torch.tensor([-held[t] for t in texts], dtype=torch.float64)  # lower is better, as calib
    add(
        "adaptive_searched_best",
        (r.nfe - nfe0) / (p * len(texts)),
        held[best],
        best,
        searched_paths=len(texts),
        rank_corr=_spearman(calib, out),
    )


def _mean_log(errors) -> float:
    return float(torch.as_tensor(errors, dtype=torch.float64).clamp_min(1e-300).log().mean())


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Rank correlation of two [K] series (None under 3 values or where one is constant)."""
    if a.numel() < 3:
        return None
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else None


def transfer_rows(
    problem: Problem, sampler: str, steps: int, skips: int, idx, extrapolation: str = "auto"
) -> list[dict]:
    """How prompt-specific the greedy paths are: each prompt of idx gets its own greedy path at `skips` skips
    (``greedy_skip_paths(joint=False)``, the reference of ``greedy_optimal``), then every prompt is sampled along
    every prompt's path and the default controller's path, in one batch. Decoded PSNR against each prompt's full run.

    Rows (mean over the prompts): ``greedy_own`` (each prompt along its own path), ``greedy_transfer`` (each
    prompt along the other prompts' paths, the mean over the ordered pairs: what a path carried over from one other
    prompt gives), ``greedy_transfer_best`` (each prompt along the best of the other prompts' paths for it, chosen
    with its full run: more than any choice made without it) and ``adaptive_transfer_prompts`` (the default's path,
    taken on the first prompt, on every prompt). ``greedy_transfer`` holds ``transfer_db`` ([path][prompt], the
    last path the default's) and ``paths``; ``greedy_own`` the counts of pairs within 3 dB of the prompt's own."""
    idx = torch.as_tensor(idx)
    n = len(idx)
    if n < 2:
        raise ValueError(f"prompts: a transfer needs at least 2, got {n}")
    r = _Runner(problem, sampler, steps, extrapolation)
    ref = problem.decode(r.run(idx, None))
    errors_of = r.errors_of(idx, ref)
    g = greedy_skip_paths(errors_of, n, steps, skips, joint=False)
    default = _default_path(problem, sampler, steps, skips, idx, extrapolation, r)
    paths = torch.cat([g.path, default[None]])  # [n + 1, N]
    nfe0 = r.nfe
    db = -10 * torch.log10(errors_of(paths[:, None, :].repeat(1, n, 1)).clamp_min(1e-12))  # [n + 1, n]
    nfe = (r.nfe - nfe0) / ((n + 1) * n)
    own = db.diagonal()
    off = ~torch.eye(n, dtype=torch.bool)
    other = db[:n].masked_fill(~off, float("-inf"))
    within = int(((db[:n] >= own[None] - 3.0) & off).sum())
    base = {**_row_head(problem, sampler, steps, skips), "prompts": n, "nfe": float(nfe)}
    text = ["".join("C" if c else "s" for c in p.tolist()) for p in paths]
    return [
        {
            **base,
            "method": "greedy_own",
            "psnr_db": float(own.mean()),
            "pairs_within_3db": within,
            "pairs": n * (n - 1),
        },
        {
            **base,
            "method": "greedy_transfer",
            "psnr_db": float(db[:n][off].mean()),
            "transfer_db": [[round(float(v), 3) for v in row] for row in db],
            "paths": text,
        },
        {**base, "method": "greedy_transfer_best", "psnr_db": float(other.max(0).values.mean())},
        {**base, "method": "adaptive_transfer_prompts", "psnr_db": float(db[n].mean()), "path": text[n]},
    ]


# ----------------------------------------------------------------------------- the command
def _indices(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what}: expected comma-separated class numbers such as 0,1,2, got {text!r}") from None


def add_parser(sub) -> None:
    """`comfyui-tempo adaptive calibrate`: registered under the `adaptive` command."""
    p = sub.add_parser(
        "calibrate",
        help="calibrate a skip profile on the bundled testbed (joint greedy over a few classes) and save it",
    )
    p.add_argument("--out", default="out/profiles/testbed.json", help="the profile file to write")
    p.add_argument("--sampler", default="euler", choices=sorted(kdiff.SAMPLERS))
    p.add_argument("--scheduler", default="karras", choices=["karras", "normal"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--target-speedup", type=float, default=2.0)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--extrapolation", default="auto", choices=list(EXTRAPOLATIONS))
    p.add_argument("--calib", default="0,1,2", help="calibration classes (the 'prompts')")
    p.add_argument(
        "--heldout", default="", help="held-out classes: also measure the profile on them (e.g. 3,4,5,6,7,8,9)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per class: calibration on each class's first (--calib-seeds: more), held out on all",
    )
    p.add_argument(
        "--calib-seeds",
        type=int,
        default=1,
        help="calibrate on each calibration class's first K seeds (1 to --seeds; what a latent batch of K gives the "
        "Calibrate node)",
    )
    p.add_argument("--json", help="with --heldout: write the rows here")
    p.add_argument("--no-refine", action="store_true", help="the greedy path alone (no local search after it)")
    p.add_argument(
        "--check",
        action="store_true",
        help="leave each calibration class out once (one more search each) and keep the default's path where the "
        "searched path does worse on the left-out classes",
    )
    p.add_argument("--threads", type=int, default=0)


def main(args) -> int:
    from ..testbed import problems

    if args.threads:
        torch.set_num_threads(args.threads)
    calib = _indices(args.calib, "--calib")
    held = _indices(args.heldout, "--heldout")
    k = max(1, args.seeds)
    if not 1 <= args.calib_seeds <= k:
        raise SystemExit(f"--calib-seeds: expected 1 to --seeds ({k}), got {args.calib_seeds}")
    problem = problems.trained_problem(classes=10, seeds=k, cfg=args.cfg, scheduler=args.scheduler)
    # the problem's rows: class c, seed s at c * k + s
    calib = [c * k + s for c in calib for s in range(args.calib_seeds)]
    held = [c * k + s for c in held for s in range(k)]
    skips = skips_for_speedup(args.steps, args.target_speedup)
    prof = calibrate(
        problem,
        args.sampler,
        args.steps,
        skips,
        calib,
        args.extrapolation,
        refine=not args.no_refine,
        validate=args.check,
    )
    save_profile(prof, args.out)
    print(prof.summary())
    print(f"wrote {args.out}")
    if held:
        rows = calibration_rows(
            problem, args.sampler, args.steps, skips, calib, held, args.extrapolation, True, print, prof, vote=True
        )
        print()
        table = print_table(rows, COLUMNS)
        if args.json:
            write_json(args.json, {"rows": rows, "table": table, "profile": prof.to_dict()})
            print(f"\nwrote {args.json}")
    return 0 if all(math.isfinite(v) for v in prof.errors) else 1
