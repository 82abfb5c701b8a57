"""The greedy skip-path search moved to ``samplers/calibrate.py`` (the calibration node runs it too); these names
stay importable from here for the benchmark code and its tests."""

from ..samplers.calibrate import GreedyResult, greedy_skip_path, greedy_skip_paths

__all__ = ["GreedyResult", "greedy_skip_path", "greedy_skip_paths"]
