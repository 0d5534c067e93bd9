#!/bin/bash
# `ssi submit --net private` through the CLI, as root, after `make setup`: a TCP
# counter server on a 3-node local cluster (its own prefix and a free subnet), a
# client on the host keeping one connection open while the job moves node1 -> node2
# (cold) -> node3 (live). The client checks every answer; the cluster goes at exit.
set -e
root=$(cd "$(dirname "$0")/.." && pwd)
P=npdemo
S=$("$root/.venv/bin/python" -c "from ssi.local.testing import free_subnet; print(free_subnet())")
ssi() { "$root/.venv/bin/ssi" --local-prefix $P "$@"; }
work=$(mktemp -d)
trap 'ssi cluster down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
ssi cluster up --local 3 --subnet "$S"
chmod 755 "$work" && cd "$work"
J=$(ssi submit --net private --node node1 -- python3 -c '
import os, socket, threading
def serve(c):
    f = c.makefile("rwb", buffering=0)
    for k, line in enumerate(f, 1):
        f.write(b"%s %d\n" % (line.strip(), k))
s = socket.socket(); s.bind(("0.0.0.0", 7500)); s.listen(8)
while True:
    threading.Thread(target=serve, args=(s.accept()[0],), daemon=True).start()')
sleep 2
ssi show $J | head -8
A=$(ssi show $J --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["spec"]["net"]["address"])')
python3 -u -c '
import socket, sys, time
s = socket.create_connection((sys.argv[1], 7500)); f = s.makefile("rwb", buffering=0)
last = time.time(); worst = 0
for n in range(1, 100000):
    f.write(b"%d\n" % n); got = f.readline().split()
    assert got == [b"%d" % n] * 2, got
    now = time.time(); worst = max(worst, now - last); last = now
    if n % 200 == 0: print(f"client: {n} answers in order on one connection, longest pause {worst:.2f}s", flush=True)
    time.sleep(0.01)
' $A &
C=$!
sleep 3
ssi migrate $J node2
sleep 3
ssi migrate $J node3 --live
sleep 4
kill $C
ssi show $J | head -8
ssi kill $J
