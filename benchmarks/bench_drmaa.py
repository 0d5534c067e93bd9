"""DRMAA submission rates and latency, against ssi's own Python client in the same run.

    drmaa.Session.runJob        one job per call    ─┐
    drmaa.Session.runBulkJobs   N jobs per call      ├─ libdrmaa ─unix─▶ ssid(node1)
    LocalClient JobSubmit       one job per call     │                     coordinator
    LocalClient JobSubmitBatch  N jobs per call     ─┘

Rates are submissions per second as the caller sees them (the call returns once the
coordinator has stored the jobs); the jobs are submitted held (DRMAA_SUBMISSION_STATE_
HOLD) so that running thousands of them does not compete with the submitter for the
two cores, and cancelled afterwards. Latency: a trivial job (/bin/true) from runJob
to wait() returning, one at a time. Goal: >= 1,000 jobs/s through DRMAA bulk.

    .venv/bin/python benchmarks/bench_drmaa.py [--singles 500] [--bulk 2000]
        [--latency 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssi.drmaa import _build  # noqa: E402
from ssi.local.ssids import LocalSsiCluster  # noqa: E402
from ssi.local.testing import free_subnet, unique_prefix  # noqa: E402
from ssi.proto import messages as m  # noqa: E402
from ssi.rpc.local import LocalClient  # noqa: E402


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:8.0f} jobs/s  ({n} in {seconds:.2f} s)"


def drmaa_rates(drmaa: Any, singles: int, bulk: int) -> dict[str, tuple[int, float]]:
    out = {}
    with drmaa.Session() as s:
        jt = s.createJobTemplate()
        jt.remoteCommand = "/bin/true"
        jt.jobSubmissionState = drmaa.JobSubmissionState.HOLD_STATE
        s.runJob(jt)  # warm: the embedded module, the connection
        t = time.perf_counter()
        for _ in range(singles):
            s.runJob(jt)
        out["drmaa runJob"] = (singles, time.perf_counter() - t)
        t = time.perf_counter()
        ids = s.runBulkJobs(jt, 1, bulk, 1)
        out["drmaa runBulkJobs"] = (len(ids), time.perf_counter() - t)
        s.control(drmaa.Session.JOB_IDS_SESSION_ALL, drmaa.JobControlAction.TERMINATE)
    return out


def client_rates(sock: str, singles: int, bulk: int) -> dict[str, tuple[int, float]]:
    env = dict(os.environ)
    body = m.JobSubmit(argv=["/bin/true"], cwd=os.getcwd(), env=env, hold=True)
    out = {}
    with LocalClient(sock, timeout=120) as c:
        c.call(body)
        t = time.perf_counter()
        ids = [c.call(body)["id"] for _ in range(singles)]
        out["ssi client JobSubmit"] = (singles, time.perf_counter() - t)
        t = time.perf_counter()
        done = c.call(m.JobSubmitBatch(jobs=[body] * bulk))
        out["ssi client JobSubmitBatch"] = (len(done), time.perf_counter() - t)
        for job_id in ids + [j["id"] for j in done]:
            c.call(m.JobKill(job=job_id))
    return out


def latency(drmaa: Any, n: int) -> list[float]:
    samples = []
    with drmaa.Session() as s:
        jt = s.createJobTemplate()
        jt.remoteCommand = "/bin/true"
        s.wait(s.runJob(jt))  # warm
        for _ in range(n):
            t = time.perf_counter()
            s.wait(s.runJob(jt), drmaa.Session.TIMEOUT_WAIT_FOREVER)
            samples.append(time.perf_counter() - t)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--singles", type=int, default=500)
    ap.add_argument("--bulk", type=int, default=2000)
    ap.add_argument("--latency", type=int, default=30)
    a = ap.parse_args()
    lib = _build.ensure_built()
    cluster = LocalSsiCluster(2, prefix=unique_prefix("b"), subnet=free_subnet())
    with cluster.up(), tempfile.TemporaryDirectory() as work:
        sock = str(cluster.socket("node1"))
        os.environ["DRMAA_LIBRARY_PATH"] = str(lib)
        os.environ["SSI_SOCKET"] = sock
        os.chdir(work)
        import drmaa

        lat = latency(drmaa, a.latency)
        results = drmaa_rates(drmaa, a.singles, a.bulk)
        results.update(client_rates(sock, a.singles, a.bulk))
    print(f"libdrmaa: {lib}  (2-node local cluster, {os.cpu_count()} CPUs)")
    print("submissions (held jobs, as the caller sees them):")
    for name, (n, seconds) in results.items():
        print(f"  {name:28s} {rate(n, seconds)}")
    bulk_rate = results["drmaa runBulkJobs"][0] / results["drmaa runBulkJobs"][1]
    verdict = "met" if bulk_rate >= 1000 else "NOT met"
    print(f"  goal >= 1,000 jobs/s through DRMAA bulk: {verdict}")
    lat.sort()
    print(
        f"latency runJob -> wait of /bin/true over {len(lat)} jobs: "
        f"median {statistics.median(lat) * 1e3:.1f} ms, "
        f"p90 {lat[int(len(lat) * 0.9) - 1] * 1e3:.1f} ms, "
        f"min {lat[0] * 1e3:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
