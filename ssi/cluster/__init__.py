"""Cluster membership and the coordinator's state.

agent ──node.join(token)──▶ coordinator ──▶ StateStore (sqlite WAL | etcd later)
agent ──node.heartbeat────▶ Membership (sans-IO) ──▶ NodeEvents ──▶ every service
admin ──node.drain/resume/evict──▶ coordinator ──┘
"""
