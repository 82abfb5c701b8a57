"""One skip plan for a run that ComfyUI splits over two sampler calls.

Two KSamplerAdvanced nodes split one run where the first ends at step K with its leftover noise and the second starts
at step K (Wan 2.2's high- and low-noise experts, SDXL's base and refiner); SplitSigmas does the same for two
SamplerCustomAdvanced nodes. Each call sees only its own sigmas, so on its own the planner halves each segment. Where
one half of the schedule is far cheaper to skip than the other (on a flow model, karras's last half; at shift 8,
``simple``'s first half), the whole run's plan puts most of its skips there, and halving each call forces half of
them onto the costly half (``bench adaptive --grid-split``: 4.7 to 19.6 dB on the flow testbeds).

Here the calls plan the whole run once, each running its slice:

* **the first call** ends above sigma 0: ``find_whole_run`` finds the schedule its sigmas begin (the scheduler and
  step count, value for value, among the schedules it is given: the node gives ComfyUI's). The controller plans that
  whole run and runs the first slice; ``SplitRuns.register`` records the run.
* **a later call** whose sigmas are exactly the rest of a recorded run (from its split step to 0) plans the same whole
  run and runs the rest (``SplitRuns.locate``). Its sigmas alone could not say it continues a run: an img2img run at
  denoise below 1 also runs a schedule's last steps. Only a recorded first call makes it a continuation; anything
  else plans its own sigmas, as before.

Both plan with the split step run (the second call has nothing to reuse), so they agree on one path. A split into
three or more calls: a middle call (it continues a recorded call and ends above 0) adds its last step to the run's
split steps and is recorded in turn; it and the calls after it plan with all of them, the first call with its own
only (their plans may then differ by a step; the reports say so).
Plain PyTorch-free Python; the node adapter (``nodes/adaptive.py``) passes ComfyUI's schedules and keeps one
``SplitRuns`` for the process, the benchmark one per cell.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass

#: the most steps a whole run may have (KSamplerAdvanced's own limit)
MAX_STEPS = 10000
#: relative tolerance of "the same sigma" (ComfyUI's sigmas are float32; both calls compute them alike)
REL_TOL = 1e-6


@dataclass(frozen=True)
class WholeRun:
    """A sampler call's place in a whole run: ``sigmas`` (the whole schedule, steps + 1 values, ending at 0), this
    call's first and last sigma's indices in it (``start`` .. ``end``; its steps are ``start`` .. ``end`` - 1), and
    ``protect``, the steps where the run's calls are known to start (after the first; their plans run them: a call
    has nothing to reuse at its first step). ``done``: the path the earlier calls ran (steps 0 .. start - 1, True =
    the network ran; empty where not recorded): the plan keeps it. ``scheduler``: how the schedule was found (the
    schedule function's name for it), for the report."""

    sigmas: tuple[float, ...]
    start: int
    end: int
    scheduler: str = ""
    protect: tuple[int, ...] = ()
    done: tuple[bool, ...] = ()

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def describe(self) -> str:
        how = f"{self.steps}-step {self.scheduler} run" if self.scheduler else f"{self.steps}-step run"
        if self.start == 0:
            part = "first"
        elif self.end < self.steps:
            part = "middle"
        else:
            part = "last" if len(self.protect) > 1 else "second"
        at = ("step " if len(self.protect) == 1 else "steps ") + ", ".join(str(i) for i in self.protect)
        return (
            f"steps {self.start}-{self.end - 1} of a {how}, split at {at}: planned as the whole run (the split steps "
            f"run), this call runs its slice ({part} call; split_plan whole_run)"
        )


def shares(config) -> bool:
    """Whether a run with this ``AdaptiveConfig`` plans a split run as a whole: mode target, planner schedule,
    split_plan whole_run, skipping on."""
    return (
        config.mode == "target" and config.planner == "schedule" and config.split_plan == "whole_run" and config.enabled
    )


def same_sigmas(a: Iterable[float], b: Iterable[float]) -> bool:
    """The same schedule, value for value (within REL_TOL)."""
    a, b = list(a), list(b)
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-12) for x, y in zip(a, b))


def _floats(sigmas) -> list[float]:
    return [float(s) for s in sigmas]


def find_whole_run(
    sigmas, schedule: Callable[[Hashable, int], Iterable[float]], names: Iterable[Hashable], max_steps: int = MAX_STEPS
) -> list[WholeRun]:
    """The whole runs whose first steps ``sigmas`` are, most likely first; [] if none.

    sigmas: a call's schedule ending above 0 (a first call of a split run). schedule(name, n): the sigmas of that
    schedule at n steps; names: the schedules to try, in order of preference. For each, a doubling and then a
    bisection on the step count find where the schedule's sigma at this call's last index reaches this call's last
    sigma (it grows with the step count), then the step counts around it are compared value for value. Several may
    match: ComfyUI's ``normal`` at n steps begins as ``sgm_uniform`` at n - 1 does (they differ in the last step),
    ``linear_quadratic`` at 2m and 2m + 1 steps share their first m; they come in the order of ``names``, then of
    step count."""
    seg = _floats(sigmas)
    k = len(seg) - 1
    if k < 1 or seg[-1] <= 0:
        return []
    target = seg[-1] * (1 - REL_TOL)
    found: dict[tuple[float, ...], WholeRun] = {}
    for name in names:
        cache: dict[int, list[float] | None] = {}

        def full(n: int, name=name, cache=cache) -> list[float] | None:
            if n not in cache:
                try:
                    cache[n] = _floats(schedule(name, n))
                except Exception:  # a schedule that cannot make n steps here: not this one
                    cache[n] = None
            return cache[n]

        def key(n: int) -> float:
            s = full(n)
            return s[k] if s is not None and len(s) > k + 1 else -math.inf

        lo, hi = k + 1, k + 1  # doubling, then a bisection: the schedules computed stay near the run's length
        while key(hi) < target:
            if hi >= max_steps:
                break
            lo, hi = hi + 1, min(2 * hi, max_steps)
        if key(hi) < target:
            continue
        while lo < hi:  # the smallest step count whose sigma at index k reaches this call's last sigma
            mid = (lo + hi) // 2
            if key(mid) >= target:
                hi = mid
            else:
                lo = mid + 1
        for n in range(max(k + 1, lo - 3), min(max_steps, lo + 3) + 1):
            s = full(n)
            if s is not None and len(s) > k + 1 and s[-1] == 0 and same_sigmas(s[: k + 1], seg):
                found.setdefault(tuple(s), WholeRun(tuple(s), 0, k, _label(name), (k,)))
    return list(found.values())


def schedule_candidates(
    sigmas_of: Callable[[str, int], Iterable[float]],
    schedulers: Iterable[str],
    discard: bool,
    basic_first: bool = False,
) -> tuple[Callable[[Hashable, int], list[float]], list[Hashable]]:
    """(schedule(name, n), names) for ``find_whole_run`` / ``SplitRuns.place``: every scheduler, ``normal`` first (its
    first steps are also ``sgm_uniform``'s, and it is KSampler's default), from sigmas_of(scheduler, n) (ComfyUI's
    ``calculate_sigmas`` in the nodes, ``samplers.schedules.get_sigmas`` for the testbeds). discard: the sampler's
    KSampler schedule drops the penultimate sigma (uni_pc, dpm_2, ...); then both forms are tried, KSampler's first
    and BasicScheduler's whole one after it, or the other way round with ``basic_first`` (the SAMPLER node, whose
    sigmas come from a SIGMAS input): a discarded schedule at n steps begins as the whole one at n + 1 does. A name is
    (scheduler, discarded)."""
    order = sorted(schedulers, key=lambda n: n != "normal")
    forms = ((False, True) if basic_first else (True, False)) if discard else (False,)
    names: list[Hashable] = [(n, dropped) for dropped in forms for n in order]

    def schedule(name, n: int) -> list[float]:
        scheduler, dropped = name
        if dropped:
            s = _floats(sigmas_of(scheduler, n + 1))
            return s[:-2] + s[-1:]
        return _floats(sigmas_of(scheduler, n))

    return schedule, names


def _label(name: Hashable) -> str:
    return str(name[0] if isinstance(name, tuple) and name else name)


class SplitRuns:
    """The calls of split runs that later calls continue (first and middle calls), planned as whole runs, with the
    path they ran; newest last, at most ``keep``. One per process in the nodes (ComfyUI runs one prompt at a time)."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._runs: OrderedDict[tuple, list[WholeRun]] = OrderedDict()
        self._done: dict[tuple, tuple[bool, ...]] = {}  # the path the recorded calls and those before them ran

    def register(self, runs: list[WholeRun]) -> None:
        """Record a call that more calls continue (a first call, or a middle one): ``runs[0]``, the run it planned,
        and the others its sigmas also begin (a continuation of any of them is this run's); re-registering moves it to
        the newest."""
        if not runs or runs[0].end >= runs[0].steps:
            return
        key = (runs[0].sigmas, runs[0].end)
        self._runs.pop(key, None)
        self._done.pop(key, None)
        self._runs[key] = list(runs)
        while len(self._runs) > self.keep:
            old, _ = self._runs.popitem(last=False)
            self._done.pop(old, None)

    def continuation(self, sigmas) -> tuple[WholeRun | None, str]:
        """The recorded run that ``sigmas`` continue (they begin at its call's last sigma and follow its schedule: to
        0, the last call; above 0, a middle call, whose end is then one more split step), newest first, and a note
        where the first call planned another of the runs its sigmas begin or the earlier calls' path is missing; (None,
        "") if none."""
        seg = _floats(sigmas)
        if len(seg) < 2:
            return None, ""
        for runs in reversed(self._runs.values()):
            for i, run in enumerate(runs):
                rest = run.sigmas[run.end :]
                if len(seg) > len(rest) or not same_sigmas(rest[: len(seg)], seg):
                    continue
                end = run.end + len(seg) - 1
                more = (end,) if end < run.steps else ()
                done = self._done.get((runs[0].sigmas, runs[0].end), ())
                done = done if len(done) == run.end else ()
                notes = []
                if i:
                    notes.append(
                        f"the first call planned its steps as a {runs[0].steps}-step {runs[0].scheduler} run (its "
                        f"sigmas begin both); this call continues the {run.steps}-step {run.scheduler} run from the "
                        "path the first ran"
                    )
                if not done:
                    notes.append(
                        "the path the earlier calls ran was not recorded: this call plans the whole run anew, so the "
                        "calls together may run a step more or less than the target"
                    )
                return WholeRun(run.sigmas, run.end, end, run.scheduler, run.protect + more, done), "; ".join(notes)
        return None, ""

    def ran(self, run: WholeRun, path) -> None:
        """Record the path a call of ``run`` ran (its steps; bools, True = the network ran), after it ran: the calls
        that continue it keep it and spend on their steps what the whole run's target leaves (so a middle call's extra
        split step costs no extra evaluation)."""
        if run.end >= run.steps:
            return
        path = tuple(bool(v) for v in path)
        if len(path) != run.end - run.start or len(run.done) != run.start:
            return
        key = (run.sigmas, run.end)
        if key in self._runs:
            self._done[key] = run.done + path

    def locate(
        self,
        sigmas,
        schedule: Callable[[Hashable, int], Iterable[float]],
        names: Iterable[Hashable],
        max_steps: int = MAX_STEPS,
    ) -> tuple[list[WholeRun], str]:
        """A call's place in a split run: the continuation of a recorded call (``continuation``: one run), else a first
        call (ends above 0: the whole runs its sigmas begin, the one to plan first; ``find_whole_run``), else [] (plan
        its own sigmas); and a note where one is worth it. Record a call with ``register`` once planned."""
        seg = _floats(sigmas)
        run, note = self.continuation(seg)
        if run is not None:
            return [run], note
        if len(seg) >= 2 and seg[-1] > 0:
            return find_whole_run(seg, schedule, names, max_steps), ""
        return [], ""

    def place(
        self,
        sigmas,
        config,
        schedule: Callable[[Hashable, int], Iterable[float]],
        names: Iterable[Hashable],
        max_steps: int = MAX_STEPS,
    ) -> tuple[WholeRun | None, str]:
        """(this call's place in a split run to plan it by, or None; a note): ``locate`` where the config shares
        (``shares``); a call that later calls may continue is recorded (then ``ran`` once it ran). What the nodes and
        the benchmark call."""
        if not shares(config):
            return None, ""
        runs, note = self.locate(sigmas, schedule, names, max_steps)
        if not runs:
            return None, note
        self.register(runs)  # a call that more calls continue: a first or a middle one
        return runs[0], note
