"""The pieces of `--net private` that need no root: the address pool, MACs, the
[net] settings, the lock table CRIU lifts, the gratuitous ARP frame, the local
cluster's names for job namespaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssi import config
from ssi.jobs.model import JobSpec, NetSpec
from ssi.local.naming import Naming, node_of_netns, owns_netns
from ssi.net import AddressPool, PoolError, mac_for
from ssi.net.garp import frame
from ssi.net.lock import ruleset


def test_pool_hands_out_the_lowest_free_address() -> None:
    pool = AddressPool.parse("10.87.0.128/30")
    assert pool.take([]) == "10.87.0.129"
    assert pool.take(["10.87.0.129", "10.1.1.1"]) == "10.87.0.130"
    with pytest.raises(PoolError, match=r"no free address in \[net\] pool"):
        pool.take(["10.87.0.129", "10.87.0.130"])


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", r"no address pool: set \[net\] pool"),
        ("10.87.0.300/24", "not an IPv4 network"),
        ("10.87.0.1/24", "not an IPv4 network"),  # host bits set
        ("10.87.0.0/31", "no usable address"),
    ],
)
def test_a_bad_pool_says_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(PoolError, match=why):
        AddressPool.parse(text)


def test_the_mac_follows_the_address() -> None:
    assert mac_for("10.87.0.129") == "02:73:0a:57:00:81"
    assert mac_for("10.87.0.130") != mac_for("10.87.0.129")


def test_a_bad_pool_in_the_configuration_names_the_file_and_key(
    tmp_path: Path,
) -> None:
    f = tmp_path / "ssi.toml"
    f.write_text('[net]\npool = "10.87.0.0/33"\n')
    with pytest.raises(config.ConfigError, match=r"ssi.toml.*\[net\] pool.*\$\.net"):
        config.load(f)
    f.write_text('[net]\npool = "10.87.0.128/26"\nnetns_prefix = "x-"\n')
    assert config.load(f).net.pool == "10.87.0.128/26"


def test_a_job_spec_refuses_a_bad_address() -> None:
    JobSpec(argv=["x"], net=NetSpec(address="10.0.0.1")).check()
    with pytest.raises(ValueError, match="no IPv4 address"):
        JobSpec(argv=["x"], net=NetSpec(address="10.0.0")).check()


def test_the_lock_lets_only_criu_repair_packets_through() -> None:
    text = ruleset("CRIU-0123")
    assert "table inet CRIU-0123" in text
    assert text.count("policy drop; meta mark 0xc114 accept;") == 2


def test_a_gratuitous_arp_announces_the_address_as_its_own() -> None:
    mac = bytes.fromhex("02730a570081")
    f = frame(mac, "10.87.0.129")
    assert len(f) == 60
    assert f[:6] == b"\xff" * 6 and f[6:12] == mac and f[12:14] == b"\x08\x06"
    arp = f[14:42]
    assert arp[7] == 1  # a request
    assert arp[8:14] == mac and arp[14:18] == arp[24:28] == bytes([10, 87, 0, 129])


def test_the_local_cluster_owns_its_jobs_namespaces() -> None:
    naming = Naming.make("ssi", "10.87.0.0/24")
    assert naming.job_netns_prefix(3) == "ssi-node3-job"
    assert owns_netns("ssi", "ssi-node3-job17")
    assert not owns_netns("ssi", "ssi2-node3-job17")
    assert not owns_netns("ssi", "ssi-node3-job")
    assert node_of_netns("ssi", "ssi-node3-job17") == 3
    assert node_of_netns("ssi", "ssi-node3") == 3
    assert node_of_netns("ssi", "other") is None
