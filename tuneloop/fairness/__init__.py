"""Bias and fairness audit (`tuneloop fairness`): group metrics, counterfactuals, stereotypes, gate.

Modules: `groups` (per-group metrics and disparities with Fairlearn), `attributes` (which group
each example is in), `terms` (identity-term lists and rewrites), `counterfactual` (flip rates,
answer changes), `stereotype` (CrowS-Pairs), `gate` (thresholds), `report` (files and HTML),
`stage` (the `run` entry point). Default term lists and CrowS-Pairs are in `data/` (see
`data/LICENSES.md`).
"""

from tuneloop.fairness.report import report_section
from tuneloop.fairness.stage import FairnessResult, audit, audit_run, run

__all__ = ["FairnessResult", "audit", "audit_run", "report_section", "run"]
