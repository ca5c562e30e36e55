"""Shared fixtures: where ../shared is, and the shared CIFAR-10 archive decoded once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CIFAR10_ARCHIVE = SHARED / "data" / "cifar10-jpeg.tar.gz"


def require_shared(*parts: str) -> Path:
    """The path under ../shared, or skip the test saying what is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the offline material in ../shared is not present)")
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked `gpu` where PyTorch sees no CUDA device, saying so."""
    if torch.cuda.is_available():
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    reason = (f"needs a CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, "
              f"CUDA build {torch.version.cuda}"
              + (f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else "") + ")")
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the suite's models are tiny, and two threads on a shared 2-core
    machine oversubscribe and run up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def _messages_on_stdout() -> Iterator[None]:
    """transferlab's messages printed as the CLI prints them (`logs.print_messages`), so tests of
    library functions read them from stdout, as a CLI user sees them. A library alone prints
    nothing (tests/test_api.py checks that with the handler removed)."""
    from transferlab.logs import print_messages

    print_messages()
    yield


@pytest.fixture(scope="session")
def shared_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data/cache root for tests on shared data: $TRANSFERLAB_DATA if set, else a session temp dir."""
    env = os.environ.get("TRANSFERLAB_DATA")
    return Path(env) if env else tmp_path_factory.mktemp("transferlab-data")


@pytest.fixture(scope="session")
def shared_cifar10(shared_data_root: Path):
    """The shared CIFAR-10 image-folder archive, decoded once per test session."""
    from transferlab.data import load_dataset

    archive = require_shared("data", "cifar10-jpeg.tar.gz")
    return load_dataset(f"folder:{archive}", data_root=shared_data_root)
