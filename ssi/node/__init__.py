"""ssid, one per node.

ssi CLI ──unix socket (SO_PEERCRED)──▶ LocalServer ─┐
peers ──tcp+CURVE "cluster" domain──▶ RpcServer ───┼─▶ Agent ──RpcClient──▶ coordinator
joiners ──tcp+CURVE "join" domain───▶ RpcServer ───┘     └─ Coordinator (one node)
"""
