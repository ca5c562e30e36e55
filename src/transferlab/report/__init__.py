"""The generated report: `REPORT.md` and a self-contained `report.html` from run directories.

`write_report(run_dirs, out_dir)` reads finished runs (and sweep folders), draws the figures with
matplotlib into `out_dir/figures/`, and renders one document twice (see `report.document`).
"""

from __future__ import annotations

from transferlab.report.builder import ReportPaths, build_document, write_report

__all__ = ["ReportPaths", "build_document", "write_report"]
