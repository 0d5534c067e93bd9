"""The test suite of the PyPI `drmaa` package itself (the test/ folder of its 0.7.9
source distribution, nose-style, run by pynose) against libdrmaa on a local cluster.

The sdist is fetched with pip once into ~/.cache/ssi/drmaa-sdist. Every upstream
test runs, unmodified and none skipped, on a cluster of its own. Three of them are
worth knowing about:

- Submit.test_control_terminate is wrong for every DRMAA implementation: it calls
  Session.synchronize(self.jid, ...) with a job id string where a list of ids is
  expected, and drmaa-python turns "105" into the vector ["1", "0", "5"]: it waits
  for jobs 1, 0 and 5, whatever they are. It passes only while the job's id has a
  single character. On a fresh cluster the suite's jobs are the first ones and that
  job is "3": hence the cluster of its own (on a busy one the test fails with
  "no job '0'" or waits for strangers' jobs).
- JobTemplateTests.test_scalar_attributes sets the native specification "-shell yes"
  (Grid Engine syntax) and only reads it back: libdrmaa checks native
  specifications against ssi's resource-request language when a job is submitted,
  not when the attribute is set.
- Submit.test_control_terminate also accepts a wait() that fails with code 24 (no
  rusage): ours succeeds and reports the job as signaled (SIGTERM).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from ssi.local.ssids import LocalSsiCluster
from ssi.local.testing import free_subnet, leftovers, unique_prefix

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns)"),
    pytest.mark.root,
]

VERSION = "0.7.9"
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "ssi"
    / "drmaa-sdist"
)


def upstream_tests(dest: Path) -> Path:
    """The sdist's test/ folder, extracted into dest (the sdist downloaded once)."""
    sdist = CACHE / f"drmaa-{VERSION}.tar.gz"
    if not sdist.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary"]
        cmd += [":all:", f"drmaa=={VERSION}", "-d", str(CACHE), "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and sdist.exists(), (
            f"could not download the drmaa {VERSION} sdist (needed for its test "
            f"suite):\n{done.stdout}\n{done.stderr}"
        )
    prefix = f"drmaa-{VERSION}/test/"
    with tarfile.open(sdist) as tar:
        members = [t for t in tar.getmembers() if t.name.startswith(prefix)]
        assert members, f"{sdist} has no test/ folder"
        tar.extractall(dest, members=members, filter="data")
    return dest / prefix


def test_the_drmaa_packages_own_suite_passes(
    libdrmaa: Path, client_env: dict[str, str], workdir: Path
) -> None:
    tests = upstream_tests(workdir / "sdist")
    names = sorted(p.name for p in tests.glob("test*.py"))
    assert names == ["testcontext.py", "testmisc.py", "testwrap.py"]
    run_dir = workdir / "run"  # the jobs' working directory and output files
    run_dir.mkdir()
    cluster = LocalSsiCluster(2, prefix=unique_prefix("u"), subnet=free_subnet())
    try:
        cluster.up()
        env = dict(client_env, SSI_SOCKET=str(cluster.socket("node1")))
        done = subprocess.run(
            [sys.executable, "-m", "nose", "-v", str(tests)],
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        cluster.down()
        left = leftovers(cluster.prefix)
        assert not left, f"local cluster {cluster.prefix} leaked: {', '.join(left)}"
    report = done.stderr
    assert done.returncode == 0, f"{done.stdout}\n{report}"
    assert "Ran 19 tests" in report and "\nOK" in report, report
    assert "SKIP" not in report
