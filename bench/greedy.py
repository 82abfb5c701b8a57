"""The paper's greedy "optimal skip path": an analysis tool, not an inference policy.

For a target of K skips, start from the full path and K times add the one skip whose reuse raises
the error of the final result against the full run the least (AdaptiveDiffusion, section 3 and
Fig. 4/5/8a; the search is in the paper only, not in the official release). All candidate paths of
one round run as one batch through the per-sample path mode of the controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class GreedyResult:
    path: torch.Tensor  # bool [N], True = the network runs
    errors: list[float] = field(default_factory=list)  # final error after each added skip
    runs: int = 0  # batched sampling runs made

    def path_string(self) -> str:
        return "".join("C" if c else "s" for c in self.path.tolist())


def greedy_skip_path(
    run_paths: Callable[[torch.Tensor], torch.Tensor],
    n_steps: int,
    n_skips: int,
    error: Callable[[torch.Tensor], torch.Tensor],
    first_skippable: int = 1,
    last_skippable: int | None = None,
    max_batch: int = 64,
) -> GreedyResult:
    """Greedy search for the skip path with `n_skips` skips.

    run_paths(paths [B, N] bool) -> final results [B, ...] for one fixed noise and conditioning.
    error(results [B, ...]) -> [B] error of each against the full run (lower is better).
    Step 0 cannot be skipped (nothing to reuse yet); `first_skippable` may protect more.
    """
    last = n_steps if last_skippable is None else last_skippable
    path = torch.ones(n_steps, dtype=torch.bool)
    result = GreedyResult(path=path)
    for _ in range(n_skips):
        cands = [i for i in range(max(1, first_skippable), last) if path[i]]
        if not cands:
            break
        errs = []
        for start in range(0, len(cands), max_batch):
            chunk = cands[start : start + max_batch]
            paths = path.repeat(len(chunk), 1)
            for row, step in enumerate(chunk):
                paths[row, step] = False
            errs.append(error(run_paths(paths)).double())
            result.runs += 1
        errs = torch.cat(errs)
        best = int(errs.argmin())
        path[cands[best]] = False
        result.errors.append(float(errs[best]))
    result.path = path
    return result
