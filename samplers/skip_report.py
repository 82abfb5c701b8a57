"""What an AdaptiveDiffusion run did: its skip path, NFE and speed-up (plain data for the nodes' reports,
the plot and the benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StepRecord:
    """What happened at one sampler step (for the report and the plot)."""

    index: int
    sigma: float
    score: float | None  # the estimator's relative third-order difference (mean over samples)
    computed: float  # fraction of the batch whose network ran at this step
    evals: int = 0  # network evaluations the sampler asked for in this step
    mask: list[bool] = field(default_factory=list)  # per sample: did its network run


@dataclass
class SkipReport:
    """The skip path of one run: which steps ran, the NFE and the speed-up."""

    steps: int
    batch: int
    records: list[StepRecord] = field(default_factory=list)
    nfe_per_sample: list[int] = field(default_factory=list)
    evals_requested: int = 0  # evaluations the base sampler asked for, per sample
    model_calls: int = 0  # batched network calls actually made
    controller_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    mode: str = ""
    planner: str = ""  # mode target: "schedule" or "pace"
    extrapolation: str = ""  # what reused directions were extrapolated with ("auto" resolved)
    respaced: bool = False  # the sampler ran on the planned steps' sigmas alone (samplers.respace)
    split_path: list = field(default_factory=list)  # a split run's call: the path it planned (SplitRuns.ran)

    @property
    def nfe(self) -> float:
        """Mean network evaluations per sample."""
        if not self.nfe_per_sample:
            return 0.0
        return sum(self.nfe_per_sample) / len(self.nfe_per_sample)

    @property
    def speedup(self) -> float:
        return self.evals_requested / self.nfe if self.nfe else 1.0

    def path_string(self) -> str:
        """'C' = network ran for the whole batch, 's' = skipped, 'p' = ran for part of the batch."""
        return "".join("C" if r.computed >= 1.0 else ("s" if r.computed <= 0.0 else "p") for r in self.records)

    def summary(self) -> str:
        skipped = sum(1 for r in self.records if r.computed <= 0.0)
        how = ", ".join(
            v
            for v in (self.mode, self.planner and f"planner {self.planner}", self.extrapolation)
            if v and not (self.respaced and v == self.extrapolation)
        )
        if self.respaced:
            how += ", re-spaced"
        text = (
            f"AdaptiveDiffusion [{how}]: NFE {self.nfe:.1f} of {self.evals_requested} "
            f"({self.speedup:.2f}x), {skipped}/{self.steps} steps {'dropped' if self.respaced else 'skipped'} for the whole batch, "
            f"path {self.path_string()}"
        )
        if self.notes:
            text += " | " + "; ".join(self.notes)
        return text

    def to_dict(self) -> dict:
        return {
            "mode": self.mode,
            "planner": self.planner,
            "extrapolation": self.extrapolation,
            "respaced": self.respaced,
            "steps": self.steps,
            "batch": self.batch,
            "nfe": self.nfe,
            "nfe_per_sample": list(self.nfe_per_sample),
            "evals_requested": self.evals_requested,
            "speedup": self.speedup,
            "model_calls": self.model_calls,
            "controller_seconds": self.controller_seconds,
            "path": self.path_string(),
            "sigmas": [r.sigma for r in self.records],
            "scores": [r.score for r in self.records],
            "computed": [r.computed for r in self.records],
            "notes": list(self.notes),
        }
