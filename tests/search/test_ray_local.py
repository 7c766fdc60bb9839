"""A local search's Ray instance keeps every service on 127.0.0.1 (nothing listens elsewhere)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, subprocess
    from search.ray_cluster import connect
    from search.ray_options import RayOptions
    connect(RayOptions(num_cpus=1))
    import ray
    @ray.remote
    def where():
        return ray.util.get_node_ip_address()
    node = ray.get(where.remote())
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    mine = [ln.split()[3] for ln in ss.splitlines()
            if any(k in ln for k in ("raylet", "gcs_server", "ray::", "python"))]
    ray.shutdown()
    print(json.dumps({"worker_node": node, "listening": mine}))
""")


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["worker_node"] == "127.0.0.1"
    assert res["listening"], "found no Ray sockets to check"
    for addr in res["listening"]:
        host = addr.rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "[::ffff:127.0.0.1]"), f"Ray listens on {addr}"
