"""ssi: a single-system-image layer for Linux clusters.

ssi CLI / ssi.client / libdrmaa ──unix socket──▶ ssid (agent [+ coordinator])
                                                  │  pyzmq + CURVE between nodes
                                                  ▼
                               jobs: PID/IPC/UTS namespaces under ssi-init, CRIU
"""

__version__ = "0.1.0"
