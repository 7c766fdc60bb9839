"""Test helper: the ``ray`` command line with every node address kept on 127.0.0.1.

Ray 2.60 on Linux replaces a loopback ``--node-ip-address`` / ``--address`` with the machine's
routable address, so the nodes of a test cluster would listen on an external interface (and a node
joining at 127.0.0.1 would look for the head there); its loopback-only mode refuses to start a second
node. A test cluster must stay on 127.0.0.1, so this wrapper keeps the addresses Ray is given, then
runs Ray's own CLI: ``python loopback_ray.py start --head --port P ...``.
"""

from __future__ import annotations

import sys

import ray._private.services as services


def _keep(host: str) -> str:
    return host


services.resolve_ip_for_localhost = _keep
services.get_node_ip_address = lambda address=None: "127.0.0.1"

if __name__ == "__main__":
    from ray.scripts.scripts import main

    sys.argv[0] = "ray"
    sys.exit(main())
