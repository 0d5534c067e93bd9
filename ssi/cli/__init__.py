"""The `ssi` command: a thin client of the local ssid.

ssi <group> <verb> ──argparse──▶ commands (one module per group) ──LocalClient──▶ ssid
                                      └── output.py: tables for people, --json
"""
