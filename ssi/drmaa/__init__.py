"""DRMAA 1.0 for ssi: libdrmaa.so.1, a C library whose functions are written in
Python (cffi embedding mode) and talk to the local ssid.

    C program -ldrmaa ─┐                          ┌─ _build.py  (cffi, at install)
    drmaa (PyPI) ──────┤ libdrmaa.so.1 ───────────┤  C wrappers: start Python once
      DRMAA_LIBRARY_PATH                          │  (fixed home and sys.path)
                                                  └─ _embed.py  C ⇄ Python values
                                                       └─ session.py  DRMAA semantics
                                                           template.py  attributes
                                                           status.py    stat, rusage
                                                       └─ ssid's local socket
                                                          (ssi.client.socket_path)

What ssi makes of DRMAA:
- job ids are ssi's job ids ("42"); the contact string is the session's name, which
  ssid keeps on each job: drmaa_init(name) takes up that session's jobs again;
- drmaa_native_specification is ssi's resource-request language (`ssi submit
  --require`), e.g. "cpus>=2 mem>=1G";
- a job runs as its submitter, in drmaa_wd (default: the caller's working directory),
  with the caller's environment plus drmaa_v_env; bulk jobs also get SSI_TASK_ID;
- [host]:path names the same path on every node (one system image): the host part
  is accepted and not used; relative paths are relative to the working directory;
- drmaa_wct_hlimit and drmaa_duration_hlimit bound the job's wall-clock time (the
  smaller wins; time spent suspended counts); drmaa_start_time holds the command back
  until then; drmaa_v_email and drmaa_block_email are kept (no mail is sent);
  drmaa_job_category is kept and not used;
- TERMINATE sends SIGTERM, then SIGKILL 5 s later if the job is still there;
- the rusage strings are submission_time, start_time, end_time (unix seconds),
  wallclock, cpu, ru_utime, ru_stime (seconds), ru_maxrss (KiB), exit_status or
  signal, and hostname (the node).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["library_path", "LIBRARY_NAME"]

LIBRARY_NAME = "libdrmaa.so.1"


def library_path() -> Path:
    """Absolute path of the installed libdrmaa.so.1 (the value for
    DRMAA_LIBRARY_PATH); FileNotFoundError if it was not built."""
    path = Path(__file__).resolve().parent / LIBRARY_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: libdrmaa is built when ssi is installed "
            "(`make setup`, or `python ssi/drmaa/_build.py`)"
        )
    return path
