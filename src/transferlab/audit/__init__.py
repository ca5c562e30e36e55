"""Audit a dataset before trusting a score: duplicates and train/test leakage, likely wrong labels,
outliers and odd images, class balance (`transferlab data audit`).

```python
from transferlab.audit import AuditOptions, run_audit
result, paths = run_audit(AuditOptions("folder:PHOTOS", weights="mnv2.safetensors"), "runs/audit")
```
"""

from transferlab.audit.findings import KINDS, AuditResult, Finding
from transferlab.audit.run import (
           AuditOptions,
           audit_dataset,
           load_for_audit,
           run_audit,
           summary_lines,
)
from transferlab.audit.write import write_audit
from transferlab.data.exclude import read_exclude

__all__ = ["KINDS", "AuditOptions", "AuditResult", "Finding", "audit_dataset", "load_for_audit",
           "read_exclude", "run_audit", "summary_lines", "write_audit"]
