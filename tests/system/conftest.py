"""System tests run as root on real namespaces: marked `root`, skipped otherwise.

netns ──► a throwaway /run/netns/ssi-t-XXXX, deleted after the test
jobs  ──► a list the test appends its jobs to, each killed and reaped after the test
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # for benchmarks/

from benchmarks._workloads import Job  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root"))


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh named network namespace; yields its name."""
    name = f"ssi-t-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    """Jobs to kill and reap at teardown; tests append what they start or restore."""
    started: list[Job] = []
    yield started
    for job in reversed(started):
        job.kill()
