"""Built-in policies, one per file, each declared as an `ssi.policies` entry point.

round_robin         next online node in turn that fits
least_loaded        lowest normalised load after placing the job
memory_aware        most free memory, least pressure; relieves pressured nodes
mosix               least loaded placement + MOSIX-style balancing by migration
io_aware            least disk and network contention
availability_aware  long jobs where P(stay up for their time) is highest
"""
