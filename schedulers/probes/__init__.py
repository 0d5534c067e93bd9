"""Probes: the only code in schedulers/ that does I/O (/proc, /sys, psutil).

cpu_load      decayed run-queue length, utilisation, CPU speed -> CpuSample
memory        total, available, PSI memory pressure            -> MemorySample
io            disk read/write rates, busy fraction, PSI io     -> IoSample
network       rx/tx rates, link capacity                        -> NetSample
boot          boot time: the start of the current up interval  -> BootSample
job           per job (pid list or cgroup): CPU, RSS, dirty rate -> JobSample

NodeSampler: runs the node probes, passes each field through its filters, and
returns a report dict whose keys are NodeView fields (view_from_report builds the
coordinator's NodeView from it).
"""
