"""Watch the attention masks while a model trains (the public entry point).

    from coordatt_diag.watch import MaskWatch
    watch = MaskWatch(model, probe=probe_batch, log_dir="runs/exp/mask-health")
    for epoch in range(epochs):
        train_one_epoch(...)
        watch.step(epoch)

See `coordatt_diag.integrations.loop.MaskWatch` for the options, `coordatt_diag.runs.watch` for
what a probe does, and `coordatt_diag.integrations.ultralytics` / `.lightning` for the trainers'
callbacks; docs/watch.md has the three recipes.
"""

from __future__ import annotations

from coordatt_diag.integrations.loop import MaskWatch
from coordatt_diag.runs.watch import FindingChange, ProbeResult, ProbeTime, Watch, WatchSink

__all__ = ["FindingChange", "MaskWatch", "ProbeResult", "ProbeTime", "Watch", "WatchSink"]
