"""ray_cluster.yaml and the cluster guide's on-premises variant against Ray's own cluster-config schema
(what `ray up` checks), and --address errors."""

from __future__ import annotations

import copy
import json
import re
import socket
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from conftest import ROOT, error_line, run_cli
from ray.autoscaler._private.util import prepare_config, validate_config

SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def _check(config: dict) -> dict:
    """What `ray up` does before touching a provider: schema, defaults, schema again."""
    jsonschema.validate(config, SCHEMA)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _start_commands(config: dict) -> list[str]:
    return [c for k in ("head_start_ray_commands", "worker_start_ray_commands")
            for c in config[k] if "ray start" in c]


def _onprem() -> dict:
    guide = (ROOT / "docs" / "how-to" / "cluster.md").read_text()
    block = re.search(r"```yaml\n(# on-premises.*?)```", guide, re.S)
    assert block, "docs/how-to/cluster.md lost its on-premises cluster example"
    return yaml.safe_load(block.group(1))


def test_ray_cluster_yaml_is_a_valid_cluster_config():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    prepared = _check(config)
    assert config["provider"]["type"] == "aws"
    head = config["head_node_type"]
    gpu_types = {k: v for k, v in config["available_node_types"].items() if v["resources"].get("GPU")}
    assert gpu_types and head not in gpu_types
    for t in gpu_types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert prepared["available_node_types"][head]["max_workers"] == 0
    # The image is the pinned Ray, with CUDA on the GPU workers.
    assert config["docker"]["worker_image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert config["docker"]["head_image"].startswith(f"rayproject/ray:{ray.__version__}-py311")
    # Token authentication on every node; the dashboard on the head's loopback only.
    starts = _start_commands(config)
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]
    assert "~/.ray/auth_token" in config["file_mounts"]
    # The project and its Horovod build (NCCL on GPU nodes) are installed on the nodes.
    setup = " ".join(prepared["worker_setup_commands"])
    assert "pip install --quiet -e ~/unet3d-search" in setup and "HOROVOD_GPU_OPERATIONS=NCCL" in setup
    assert "install_horovod.sh" in " ".join(prepared["head_setup_commands"])


def test_the_readme_on_premises_variant_is_a_valid_cluster_config():
    config = _onprem()
    prepared = _check(config)
    assert config["provider"]["type"] == "local"
    assert len(prepared["provider"]["worker_ips"]) == 2
    starts = _start_commands(config)
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert "--dashboard-host=127.0.0.1" in starts[0]


def test_the_schema_check_rejects_a_broken_config():
    config = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu_1x_a10g"]["min_workers"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        _check(bad)
    bad = copy.deepcopy(config)
    bad["head_node_type"] = "no_such_type"
    with pytest.raises(ValueError):
        _check(bad)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address,message", [
    (None, "no Ray cluster answers there"),
    ("not-an-address", "expected HOST:PORT"),
    ("ray://127.0.0.1:10001", "Ray Client (ray://) is not supported"),
])
def test_a_wrong_cluster_address_is_a_one_line_error_and_writes_nothing(tmp_path, address, message):
    from unet3d.data.synthetic import write_synthetic_dataset

    address = address or f"127.0.0.1:{_free_port()}"  # nothing listens there
    write_synthetic_dataset(tmp_path / "data", 4, (32, 32, 32), seed=1)
    r = run_cli("search", "--address", address, "--data", str(tmp_path / "data"), "--folds", "2",
                "--out", str(tmp_path / "results"), "--name", "x", timeout=120)
    line = error_line(r)
    assert line.startswith(f"error: --address {address}: ") and message in line
    assert not (tmp_path / "results" / "x").exists()
