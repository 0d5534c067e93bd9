"""The node-local job runtime: jobs in their own namespaces and cgroup, checkpointed
and restored with CRIU.

    ssid ──▶ JobRuntime ─┬─ start ──▶ kernel_shim.spawn ──▶ ssi-init (the job's PID 1)
                         │                                  └─▶ the command, as the user
                         ├─ cgroups.py: <base>/<job_id>, v1 or v2 (freezer, accounting)
                         ├─ checkpoint/restore ──▶ ssi.checkpoint.Criu + manifest.py
                         └─ adopt: job.json + cgroup scan + pidfds after an ssid restart

model.py: JobSpec, ExitStatus, JobStats, JobRecord. errors.py: CorruptCheckpoint,
CheckpointFailed. procfs.py: what /proc says about a job's processes. netjobs.py:
the network of a `--net private` job at each step (ssi.net does the work).
"""

from ssi.jobs.errors import CheckpointFailed, CorruptCheckpoint
from ssi.jobs.local import LocalJob
from ssi.jobs.manifest import ImageFile, Manifest, verify
from ssi.jobs.model import ExitStatus, JobRecord, JobSpec, JobState, JobStats
from ssi.jobs.runtime import JobRuntime, init_binary

__all__ = [
    "CheckpointFailed",
    "CorruptCheckpoint",
    "ExitStatus",
    "ImageFile",
    "JobRecord",
    "JobRuntime",
    "JobSpec",
    "JobState",
    "JobStats",
    "LocalJob",
    "Manifest",
    "init_binary",
    "verify",
]
