"""Calibrated skip profiles: one AdaptiveDiffusion skip path for a model, sampler, schedule and step count,
found by the calibration search (``samplers.calibrate.calibrate_path``) on a few prompts and saved as a small
JSON file.

A profile is applied through the controller's path mode (``AdaptiveConfig(mode="path")``) with the
extrapolation it was calibrated with. It holds the sigma schedule it was made for: a run with other sigmas
(other steps, scheduler, denoise or model sampling) is refused with a clear error (``check``), since a path
only means something on the schedule it was searched on.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import torch

from .adaptive_config import EXTRAPOLATIONS, AdaptiveConfig

FORMAT = "comfyui-tempo/skip-profile"
VERSION = 1
SUFFIX = ".json"
MAX_BYTES = 1 << 20  # a profile is a few kB; anything larger is not one
SIGMA_RTOL = 1e-3
RESPACED_DEFAULT = "default (re-spaced)"  # the candidate: the default's path run re-spaced, as respace auto runs it


class ProfileError(ValueError):
    """A profile is unreadable or does not fit the run; the message starts with the input's name."""


@dataclass
class SkipProfile:
    path: list[bool]  # per step, True = the network runs
    sigmas: list[float]  # the schedule it was calibrated on (steps + 1 values)
    sampler: str = ""
    scheduler: str = ""
    extrapolation: str = "auto"
    model: str = ""  # the model's identity where known (class, prediction type)
    cfg: float | None = None
    prompts: int = 0  # calibration prompts (x seeds)
    metric: str = ""  # what the error measured: "latent_mse" or "image_mse"
    reduce: str = "log"
    search: str = ""  # where the winning path started ("greedy", "default", a planner path), "+local" after it
    greedy_path: list[bool] = field(default_factory=list)  # greedy+local: the greedy's path it started from
    calib_nfe: float = 0.0  # network evaluations the calibration spent (per image)
    calib_wall_s: float = 0.0
    errors: list[float] = field(default_factory=list)  # the reduced error after each added skip
    prompt_errors: list[float] = field(default_factory=list)  # each calibration prompt's final error
    candidates: dict = field(default_factory=dict)  # {path's name: reduced error} of the paths the search compared
    validation: dict = field(default_factory=dict)  # the leave-one-prompt-out check, where it ran (calibrate_path)
    respace: bool = False  # run the path re-spaced (the sampler on its computed steps' sigmas alone), not skipped

    @property
    def steps(self) -> int:
        return len(self.path)

    @property
    def skips(self) -> int:
        return sum(1 for c in self.path if not c)

    @property
    def speedup(self) -> float:
        return self.steps / max(1, self.steps - self.skips)

    def path_string(self) -> str:
        return "".join("C" if c else "s" for c in self.path)

    def config(self) -> AdaptiveConfig:
        """The controller settings that follow this profile's path."""
        return AdaptiveConfig(
            mode="path",
            path=torch.tensor(self.path, dtype=torch.bool),
            extrapolation=self.extrapolation,
            respace="on" if self.respace else "off",
        ).validate()

    def gain_over_default_db(self) -> float | None:
        """The profile's mean PSNR on its calibration prompts minus the default path's (dB; the reduction "log"
        is the geometric mean of the MSE, so this is a difference of mean PSNR); None where not recorded."""
        ref = self.candidates.get(RESPACED_DEFAULT, self.candidates.get("default"))
        if self.reduce != "log" or not self.errors or not ref or not self.errors[-1] > 0:
            return None
        return 10.0 * math.log10(float(ref) / float(self.errors[-1]))

    def summary(self) -> str:
        gain = self.gain_over_default_db()
        default = "the default (re-spaced)" if RESPACED_DEFAULT in self.candidates else "the default's path"
        check = self.validation.get("gain_db")
        if self.validation.get("chosen") == "default" and check is not None:
            versus = (
                f"; the searched path was {-check:.1f} dB below the default's on prompts left out of its search, "
                "so this profile is the default's path"
            )
        elif check is not None and gain is not None:
            versus = (
                f"; on these prompts {gain:+.1f} dB over {default}, on prompts left out of the search {check:+.1f} dB"
            )
        elif gain is not None:
            versus = f"; on these prompts {gain:+.1f} dB over {default} (check it on others)"
        else:
            versus = ""
        if self.validation.get("note"):
            versus += f"; {self.validation['note']}"
        return (
            f"skip profile: {self.steps} steps of {self.sampler or '?'} / {self.scheduler or '?'}, "
            f"{self.skips} skips ({self.speedup:.2f}x), path {self.path_string()}, "
            f"{'re-spaced' if self.respace else 'extrapolation ' + self.extrapolation}; "
            f"calibrated on {self.prompts} prompt(s) for {self.calib_nfe:.0f} NFE, {self.calib_wall_s:.1f} s"
            f" ({self.search or 'search'}){versus}"
        )

    def check(self, sigmas, sampler: str | None = None, what: str = "profile") -> list[str]:
        """Refuse a run whose sigmas differ from the profile's (ProfileError naming `what`); return notes
        for what may differ (another sampler)."""
        run = [float(s) for s in torch.as_tensor(sigmas).flatten().tolist()]
        own = self.sigmas

        def show(s):
            return f"{len(s) - 1} steps, sigmas {s[0]:.4g} .. {s[-1]:.4g}" if s else "no steps"

        hint = (
            f"set steps {self.steps} and scheduler {self.scheduler or 'as calibrated'} with denoise 1 on the same "
            "model, or calibrate a profile for these settings"
        )
        if len(run) != len(own):
            raise ProfileError(f"{what}: made for {show(own)}, but this run has {show(run)}: {hint}")
        for a, b in zip(own, run):
            if abs(a - b) > SIGMA_RTOL * max(abs(a), abs(b)) + 1e-6:
                raise ProfileError(
                    f"{what}: made for another sigma schedule ({show(own)}; this run: {show(run)}, "
                    f"first difference {a:.5g} vs {b:.5g}): {hint}"
                )
        notes = []
        if sampler and self.sampler and sampler != self.sampler:
            notes.append(f"{what}: calibrated with sampler {self.sampler}, used with {sampler}")
        return notes

    def to_dict(self) -> dict:
        d = asdict(self)
        return {"format": FORMAT, "version": VERSION, **d, "steps": self.steps, "skips": self.skips}

    @classmethod
    def from_dict(cls, d, what: str = "profile") -> "SkipProfile":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ProfileError(f"{what}: not a ComfyUI-Tempo skip profile (no 'format': {FORMAT!r})")
        if d.get("version") != VERSION:
            raise ProfileError(f"{what}: profile version {d.get('version')!r}; this pack reads version {VERSION}")
        path, sigmas = d.get("path"), d.get("sigmas")
        if not isinstance(path, list) or not path or not all(isinstance(c, bool) for c in path):
            raise ProfileError(f"{what}: 'path' must be a non-empty list of true/false (true = the network runs)")
        if not path[0]:
            raise ProfileError(f"{what}: 'path' skips step 0, which has no prediction to reuse")
        if (
            not isinstance(sigmas, list)
            or len(sigmas) != len(path) + 1
            or not all(isinstance(s, (int, float)) and math.isfinite(s) and s >= 0 for s in sigmas)
            or any(b > a for a, b in zip(sigmas, sigmas[1:]))
        ):
            raise ProfileError(f"{what}: 'sigmas' must be {len(path) + 1} non-increasing numbers >= 0 (steps + 1)")
        if not isinstance(d.get("respace", False), bool):
            raise ProfileError(f"{what}: 'respace' must be true or false")
        if d.get("extrapolation", "linear") not in EXTRAPOLATIONS:
            raise ProfileError(f"{what}: 'extrapolation' must be one of {EXTRAPOLATIONS}")
        keys = {f for f in cls.__dataclass_fields__}
        fields = {k: v for k, v in d.items() if k in keys}
        try:
            prof = cls(**fields)
        except TypeError as e:
            raise ProfileError(f"{what}: {e}") from None
        prof.sigmas = [float(s) for s in sigmas]
        return prof


def save_profile(profile: SkipProfile, path: str) -> str:
    """Write `profile` to `path` (JSON), atomically (a .tmp beside it, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(profile.to_dict(), f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


def load_profile(path: str, what: str = "profile") -> SkipProfile:
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ProfileError(f"{what}: cannot read {name!r}: {e.strerror}") from None
    if size > MAX_BYTES:
        raise ProfileError(f"{what}: {name!r} is {size} bytes, not a skip profile (a few kB)")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProfileError(f"{what}: {name!r} is not JSON ({e})") from None
    return SkipProfile.from_dict(data, what=f"{what}: {name!r}" if what else name)
