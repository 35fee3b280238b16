"""Example tests that use a leased device.

Run them with a lease for the session:

    python3 -m pytest examples/pytest --forge-lease dut --forge-server http://127.0.0.1:8080

or under forge lease, which holds the lease and passes it in FORGE_LEASE_JSON:

    forge lease dut -- python3 -m pytest examples/pytest
"""

import os


def test_one_device_granted(forge_resources):
    devices = forge_resources["dut"]
    assert len(devices) >= 1
    assert all(d["id"] for d in devices)


def test_attributes_reach_the_tests(forge_resources):
    # Listed resources carry free-form attributes such as the host to talk to.
    for d in forge_resources["dut"]:
        assert "host" in d.get("attributes", {}), f"{d['id']} has no host attribute"


def test_grant_is_recorded(forge_grant):
    assert forge_grant["type"] == "granted"
    assert forge_grant["lease"]
    out = os.environ.get("FORGE_EXAMPLE_RECORD")
    if out:  # lets the Go test that runs this example see what was granted
        with open(out, "w") as f:
            f.write(",".join(d["id"] for d in forge_grant["resources"]["dut"]))
