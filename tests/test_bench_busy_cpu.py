"""bench/busy_cpu.py's own machinery: policy environments, competing loops, the table and verdicts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _busy_cpu():
    spec = importlib.util.spec_from_file_location("bench_busy_cpu", BENCH / "busy_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_busy_cpu"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


busy = _busy_cpu()


def test_each_policy_starts_from_no_wait_variable() -> None:
    user = {"PATH": "/bin", "OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1", "KMP_BLOCKTIME": "5"}
    assert busy.policy_env("default", user) == {"PATH": "/bin"}
    assert busy.policy_env("transferlab", user) == {"PATH": "/bin"}  # import transferlab decides
    assert busy.policy_env("passive", user) == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}
    assert busy.policy_env("spin:10000", user) == {"PATH": "/bin", "GOMP_SPINCOUNT": "10000"}
    with pytest.raises(ValueError, match="unknown policy"):
        busy.policy_env("spinny", user)


def test_competitors_run_during_the_block_and_are_gone_after() -> None:
    with busy.competitors(2) as loops:
        assert len(loops) == 2 and all(p.poll() is None for p in loops)
    assert all(p.returncode is not None for p in loops)  # killed and reaped


def _cells(quiet: float, one: float, two: float):
    return {0: busy.Cell([quiet * 0.9, quiet, quiet * 1.1], [0.1] * 3),
            1: busy.Cell([one] * 3, [0.2] * 3), 2: busy.Cell([two, two * 2, two / 2], [0.0] * 3)}


def test_table_and_verdicts_use_medians_and_shares_of_quiet() -> None:
    cells = {}
    for policy, rates in (("default", (100.0, 37.0, 16.0)), ("transferlab", (97.0, 65.0, 30.0))):
        for n, cell in _cells(*rates).items():
            cells[(policy, n)] = cell
    results = {"cnn": (cells, {})}
    lines = busy.table(results, ["default", "transferlab"])
    assert lines[2].startswith("| cnn | default | 100.0 | 37.0 (37%) | 16.0 (16%) | - |")
    assert lines[3].startswith("| cnn | transferlab | 97.0 | 65.0 (67%) | 30.0 (31%) | 97.0% |")
    verdict = busy.verdicts(results, "transferlab")[0]
    assert "1 loop 67% (>= 60%: met)" in verdict
    assert "2 loops 31% (>= 35%: NOT met)" in verdict
    assert "quiet 97.0% of default (>= 95%: met)" in verdict
