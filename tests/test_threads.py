"""OpenMP threads that yield on a busy CPU, and the CPUs a process can get (`transferlab.threads`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab import threads

REPO = Path(__file__).resolve().parents[1]
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS")

# A fresh `python -m transferlab models` that prints the thread variables at the moment it first
# imports torch (and stops there: what matters is the environment the OpenMP runtime would see).
SPY = f"""
import importlib.abc, json, os, runpy, sys

class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(json.dumps({{k: os.environ.get(k) for k in {THREAD_VARIABLES!r}}}), flush=True)
            os._exit(0)

sys.meta_path.insert(0, Spy())
sys.argv = ["transferlab", "models"]
runpy.run_module("transferlab", run_name="__main__", alter_sys=True)
"""


def _env(**user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return {**env, **user}


def _seen_by_torch(**user: str) -> dict[str, str | None]:
    out = subprocess.run([sys.executable, "-c", SPY], env=_env(**user), capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip(), f"the CLI never imported torch: {out.stderr[-2000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_sets_a_yielding_wait_policy_before_torch_loads() -> None:
    seen = _seen_by_torch()
    assert seen["OMP_WAIT_POLICY"] == threads.WAIT_POLICY["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5000"},
                                  {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "active"}])
def test_the_cli_keeps_the_users_own_setting(user: dict[str, str]) -> None:
    seen = _seen_by_torch(**user)
    for name in THREAD_VARIABLES:
        if name in user:
            assert seen[name] == user[name]
    if "GOMP_SPINCOUNT" in user:
        assert seen["OMP_WAIT_POLICY"] is None  # the user's spin count decides alone


@pytest.mark.slow
def test_libgomp_itself_runs_passive_in_a_cli_process() -> None:
    """The real thing: libgomp prints its settings at load (OMP_DISPLAY_ENV), under the CLI."""
    out = subprocess.run([sys.executable, "-m", "transferlab", "models"], capture_output=True, text=True,
                         env=_env(OMP_DISPLAY_ENV="VERBOSE"), timeout=300, check=True)
    if "OPENMP DISPLAY ENVIRONMENT" not in out.stderr:
        pytest.skip("this torch does not load libgomp (no OMP_DISPLAY_ENV output)")
    assert "GOMP_SPINCOUNT = '0'" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_torchrun_workers_run_passive_too() -> None:
    """Each torchrun worker starts the CLI, so each sets the policy; the launcher (plain torch) does
    not: two workers print libgomp's settings with no spinning, the launcher with its default."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", "0", "-m", "transferlab", "models"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(OMP_DISPLAY_ENV="VERBOSE"),
                         timeout=600, check=True)
    if "OPENMP DISPLAY ENVIRONMENT" not in out.stderr:
        pytest.skip("this torch does not load libgomp (no OMP_DISPLAY_ENV output)")
    assert out.stderr.count("GOMP_SPINCOUNT = '0'") == 2, out.stderr[-3000:]
    assert out.stderr.count("GOMP_SPINCOUNT = '300000'") == 1, out.stderr[-3000:]


# --- CPU count: affinity and cgroup quota, on made-up file trees -------------------------------


def _tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


V2_MOUNT = ("24 1 8:1 / / rw,relatime - ext4 /dev/root rw\n"
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev - cgroup2 cgroup2 rw,nsdelegate\n")


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


def test_cgroup_v2_quota_caps_the_affinity_mask(tmp_path: Path, eight_cpus: None) -> None:
    root = _tree(tmp_path, "0::/user.slice/job.scope\n", V2_MOUNT, {
        "sys/fs/cgroup/user.slice/job.scope/cpu.max": "150000 100000\n",
        "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n",
    })
    assert threads.cgroup_cpu_limit(root) == pytest.approx(1.5)
    assert threads.available_cpus(root) == 2  # 1.5 CPUs round up


def test_a_tighter_parent_cgroup_wins(tmp_path: Path, eight_cpus: None) -> None:
    root = _tree(tmp_path, "0::/user.slice/job.scope\n", V2_MOUNT, {
        "sys/fs/cgroup/user.slice/job.scope/cpu.max": "400000 100000\n",
        "sys/fs/cgroup/user.slice/cpu.max": "50000 100000\n",
    })
    assert threads.cgroup_cpu_limit(root) == pytest.approx(0.5)
    assert threads.available_cpus(root) == 1


def test_cgroup_v1_inside_a_container(tmp_path: Path, eight_cpus: None) -> None:
    # The container sees its own cgroup as the mount's root: the quota is at the mount point.
    root = _tree(tmp_path, "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
                 "32 31 0:28 /docker/abc /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup "
                 "rw,cpu,cpuacct\n",
                 {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000\n",
                  "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_limit(root) == pytest.approx(3.0)
    assert threads.available_cpus(root) == 3


def test_no_quota_leaves_the_affinity_mask(tmp_path: Path, eight_cpus: None) -> None:
    root = _tree(tmp_path, "4:cpu,cpuacct:/\n0::/\n",
                 "32 31 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n" + V2_MOUNT,
                 {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000\n",
                  "sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_limit(root) is None
    assert threads.available_cpus(root) == 8
    assert threads.available_cpus(tmp_path / "nothing here") == 8  # no /proc files: the mask


def test_the_affinity_mask_caps_a_large_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    root = _tree(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "800000 100000\n"})
    assert threads.available_cpus(root) == 1


def test_configure_threads_sets_only_what_the_user_left_open(tmp_path: Path, eight_cpus: None) -> None:
    quota = _tree(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "200000 100000\n"})
    env: dict[str, str] = {}
    assert threads.configure_threads(env, root=quota) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2"}
    assert threads.configure_threads(env, root=quota) == {}  # idempotent

    env = {"OMP_NUM_THREADS": "6", "KMP_BLOCKTIME": "0"}
    assert threads.configure_threads(env, root=quota) == {}
    assert env == {"OMP_NUM_THREADS": "6", "KMP_BLOCKTIME": "0"}

    env = {}
    assert threads.configure_threads(env, root=tmp_path / "no cgroup") == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_decode_workers_and_onnxruntime_threads_follow_the_quota(monkeypatch: pytest.MonkeyPatch,
                                                                 eight_cpus: None) -> None:
    from transferlab.data import decode
    from transferlab.models import onnx_io

    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: None)
    assert decode.resolve_workers(None) == onnx_io.usable_cores() == 8
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: 1.0)
    assert decode.resolve_workers(None) == onnx_io.usable_cores() == 1
