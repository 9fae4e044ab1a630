"""`tei-manager tune`: measured tuning of batch budgets and concurrency under a p99 latency SLO.

    workload.py     what is sent: the tenant's texts (JSONL / plain text) or a synthetic mix
    target.py       the seam to the runtimes/backends: start a temporary instance, read its peak memory
    local.py        that seam for the fallback worker as a local process (127.0.0.1, a free port)
    loadgen.py      a light closed-loop HTTP load generator
    trial.py        one setting, rising concurrency until the SLO breaks; a confirmation re-measurement
    search.py       the space per runtime, coordinate search, full grid, co-location (pure)
    confirm.py      the confirmation round: leaders re-measured longer, in turn, compared on the median
    runner.py       run_tune: ties them together within a time budget
    report.py       table, plot (PNG and text), JSON, progress bars
    writeback.py    `--write`: the chosen values into the profile, comments and all
    calibration.py  measured peak memory per model/runtime/dtype/batch budget, for the planner
"""

from __future__ import annotations

from .runner import DeploymentResult, TuneRequest, TuneResult, run_tune, tune_deployment
from .search import Space, default_space
from .target import Settings, StartFailed, TrialInstance, TrialTarget
from .trial import Schedule, TrialResult
from .workload import Workload, load, synthetic

__all__ = [
    "DeploymentResult", "Schedule", "Settings", "Space", "StartFailed", "TrialInstance", "TrialResult",
    "TrialTarget", "TuneRequest", "TuneResult", "Workload", "default_space", "load", "run_tune", "synthetic",
    "tune_deployment",
]
