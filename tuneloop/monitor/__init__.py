"""Watch the served model: drift, calibrated-confidence performance estimation, realized metrics, alarms.

`tuneloop monitor` (`run`) reads a window of the prediction log (`tuneloop.store.predictions`) and
compares it with the served run's reference (`RUN/eval/reference.jsonl`, written by `tuneloop eval`).
"""

from tuneloop.monitor.stage import MonitorResult, run

__all__ = ["MonitorResult", "run"]
