"""Searches on a real two-node Ray cluster on 127.0.0.1 (token authentication on), and faults.

The cluster: a head node and one worker node, one CPU each, both started with ``ray start`` (through
loopback_ray.py, which keeps Ray's node addresses on 127.0.0.1), every process with
RAY_AUTH_MODE=token and a fresh token. The search joins it with ``--address``. Fault injection
(search/faults.py) is switched on in the nodes' environment. The cluster is stopped at the end
(every process of its session, bounded in time).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT, error_line, run_cli
from tiny_space import SPACE

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(args: list[str], env: dict[str, str]) -> None:
    r = subprocess.run([sys.executable, str(HERE / "loopback_ray.py"), *args], env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _session_processes(token: str) -> list[psutil.Process]:
    """Every process of the cluster: they all carry its token in their environment (Ray's agents
    and workers rename themselves, so their command lines do not say which cluster they belong to)."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("RAY_AUTH_TOKEN") == token:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _stop(token: str, temp: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        procs = _session_processes(token)
        if not procs:
            break
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=5)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    markers = root / "faults"
    markers.mkdir()
    token = secrets.token_hex(16)
    # Trial 2 of the first search crashes once after epoch 1 (the marker makes it once per cluster).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "UNET3D_INJECT_FAULT": f"crash:2:1:{markers}", "PYTHONPATH": str(ROOT)}
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Ray's socket paths have a limit
    port, worker_port = _free_port(), _free_port()
    try:
        _ray(["start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
              "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"], env)
        _ray(["start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
              f"--node-manager-port={worker_port}", "--disable-usage-stats"], env)
        from unet3d.data.synthetic import write_synthetic_dataset

        write_synthetic_dataset(root / "data", 8, (32, 32, 32), seed=2)
        (root / "tiny.yaml").write_text(SPACE)
        # Longer epochs for the node-failure test, so the worker node dies mid-trial (with 12
        # steps an idle machine ran an epoch in 0.2 s: a trial could end between two looks).
        (root / "longer.yaml").write_text(SPACE.replace("steps_per_epoch: 3", "steps_per_epoch: 48"))
        yield {"root": root, "address": f"127.0.0.1:{port}", "port": port, "token": token,
               "worker_port": worker_port, "markers": markers,
               "env": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}}
    finally:
        _stop(token, temp)
        assert not _session_processes(token), "cluster processes left behind"


def _args(c: dict, name: str, *extra: str, space: str = "tiny.yaml") -> list[str]:
    return ["search", "--address", c["address"], "--data", str(c["root"] / "data"), "--cache",
            str(c["root"] / "cache"), "--space", str(c["root"] / space), "--out",
            str(c["root"] / "results"), "--name", name, "--verbose", "0", "--folds", "4",
            "--cpus-per-trial", "1", "--max-concurrent", "2", *extra]


def _node_ids(c: dict) -> dict[str, str]:
    """NodeID -> "head" / "worker", asked from the cluster itself."""
    script = ("import json, ray; ray.init(address='{}', include_dashboard=False, "
              "logging_level='ERROR'); print('NODES', json.dumps([[n['NodeID'], n['NodeManagerPort'], "
              "n['NodeManagerAddress']] for n in ray.nodes() if n['Alive']]))".format(c["address"]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, **c["env"], "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    nodes = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("NODES "))[6:])
    assert {a for _, _, a in nodes} == {"127.0.0.1"}
    return {nid: "worker" if p == c["worker_port"] else "head" for nid, p, _ in nodes}


def _listening_off_loopback(c: dict) -> list[str]:
    pids = {p.pid for p in _session_processes(c["token"])}
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    bad = []
    for line in ss.splitlines():
        parts = line.split()
        if any(f"pid={pid}," in line for pid in pids):
            host = parts[3].rsplit(":", 1)[0]
            if host not in ("127.0.0.1", "[::ffff:127.0.0.1]"):
                bad.append(line)
    return bad


def test_a_search_joins_the_cluster_and_runs_trials_on_both_nodes(cluster):
    nodes = _node_ids(cluster)
    assert sorted(nodes.values()) == ["head", "worker"]
    assert not _listening_off_loopback(cluster)

    r = run_cli(*_args(cluster, "two_nodes", "--num-samples", "4", "--max-epochs", "2",
                       "--grace-period", "2"), env=cluster["env"], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"joined the Ray cluster at {cluster['address']}: 2 node(s) (127.0.0.1), 2 CPUs" in r.stdout
    trials = json.loads((cluster["root"] / "results" / "two_nodes" / "trials.json").read_text())
    rows = trials["trials"]
    assert len(rows) == 4 and all(t["status"] == "completed" and t["epochs"] == 2 for t in rows)
    # Placement: each epoch records its node; with one CPU per node and two trials at a time, the
    # first two ran on both. (A trial's own node_id is its last epoch's: the crashed trial 2 may
    # go on in the head's worker process while a fresh one starts on the worker node.)
    assert {h["node_id"] for t in rows for h in t["history"]} == set(nodes)
    assert all(t["node"] == "127.0.0.1" for t in rows)
    # The injected crash of trial 2 after epoch 1 fired once; the trial was retried from its
    # epoch-1 checkpoint and finished: its epochs run 1, 2 (a restart from scratch would repeat 1).
    assert (cluster["markers"] / "crash_trial2_epoch1").exists()
    t2 = next(t for t in rows if t["index"] == 2)
    assert [h["epoch"] for h in t2["history"]] == [1, 2]
    assert (cluster["root"] / "results" / "two_nodes" / "best" / "model.keras").exists()
    assert not _listening_off_loopback(cluster)


def test_prepare_runs_as_ray_tasks_on_the_cluster_and_names_a_bad_case(cluster, tmp_path):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare
    from unet3d.data.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 5, (32, 32, 32), seed=5)
    r = run_cli("prepare", "--address", cluster["address"], "--data", str(data), "--cache",
                str(tmp_path / "cache"), env=cluster["env"], timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "preprocessing as Ray tasks on 2 node(s)" in r.stdout
    assert "5 cases (5 labelled)" in r.stdout and "(5 preprocessed, 0 reused" in r.stdout
    local = prepare(discover(data).cases, tmp_path / "local")  # the same bytes as a local prepare
    for entry in local:
        for name in ("image.npy", "label.npy", "fg.npy"):
            assert (tmp_path / "cache" / entry.case_id / name).read_bytes() == \
                (entry.folder / name).read_bytes()

    bad = sorted(data.glob("*/*_t2.nii.gz"))[3]  # a truncated file in the 4th case (a Ray task)
    bad.write_bytes(bad.read_bytes()[:200])
    r = run_cli("prepare", "--address", cluster["address"], "--data", str(data), "--cache",
                str(tmp_path / "cache2"), env=cluster["env"], timeout=300)
    line = error_line(r, alone=True)
    assert str(bad) in line and "unreadable or truncated NIfTI" in line


def test_a_killed_worker_node_costs_only_its_trials_which_resume_on_the_head(cluster):
    exp = cluster["root"] / "results" / "node_dies"
    worker = next(nid for nid, role in _node_ids(cluster).items() if role == "worker")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_search.py"),
         *_args(cluster, "node_dies", "--num-samples", "3", "--max-epochs", "4", "--grace-period",
                "4", "--max-failures", "2", space="longer.yaml")],
        env={**os.environ, **cluster["env"]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True)
    try:
        # Wait until Ray holds a checkpoint of a trial on the worker node, mid-trial: its result.json
        # lines, which the driver writes as it handles each report (the trainer's own checkpoint.npz,
        # or a checkpoint folder, can exist before Ray has registered it: a node killed then
        # restarts the trial afresh; and Ray deletes a folder again when a better one comes).
        deadline = time.monotonic() + 300
        while not _mid_trial_on(worker, exp, 4):
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoints in time"
            time.sleep(0.1)
        raylet = next(p for p in psutil.process_iter(["name", "cmdline"])
                      if p.info["name"] == "raylet"
                      and f"--node_manager_port={cluster['worker_port']}" in " ".join(p.info["cmdline"]))
        # The node dies: its raylet and every process it started (agents, the trial's worker).
        node_procs = [raylet, *raylet.children(recursive=True)]
        for p in node_procs:
            p.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert proc.returncode == 0, out[-4000:]
    rows = json.loads((exp / "trials.json").read_text())["trials"]
    assert len(rows) == 3 and all(t["status"] == "completed" and t["epochs"] == 4 for t in rows), \
        [(t["status"], t["epochs"], t["error"]) for t in rows]
    # The worker node is gone. Ray's GCS marks it dead only once its health checks have failed a few
    # times (some 15 s after the raylet died); a search that ends sooner finds it still listed.
    deadline = time.monotonic() + 90
    while list((nodes := _node_ids(cluster)).values()) != ["head"]:
        assert time.monotonic() < deadline, nodes
        time.sleep(2)
    head = next(iter(nodes))
    # A trial that was on the worker node went on from its checkpoint on the head: its epochs
    # keep counting up across the move.
    moved = [t for t in rows if len({h["node_id"] for h in t["history"]}) == 2]
    assert moved, [[(h["epoch"], h["node_id"][:6]) for h in t["history"]] for t in rows]
    for t in moved:
        epochs = [h["epoch"] for h in t["history"]]
        assert epochs == sorted(set(epochs)) and epochs[-1] == 4
        assert t["history"][-1]["node_id"] == head


def _mid_trial_on(node_id: str, exp: Path, epochs: int) -> bool:
    """Whether a trial on the node has reported its second epoch and not yet its last (``epochs``):
    its second report returned only once the driver had registered the first's checkpoint."""
    for t in exp.glob("trial_*"):
        text = _text(t / "result.json")
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # (whole ones)
        last = json.loads(lines[-1]) if lines else {}
        if last.get("node_id") == node_id and 2 <= last["epoch"] < epochs:
            return True
    return False


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _terminated(exp: Path) -> set[str]:
    """IDs of the trials the driver has recorded as finished (its latest experiment state): only
    those may not run again on resume; a trial whose last epoch Ray had not recorded when the driver
    died is rightly restored from its last Ray checkpoint and repeats that epoch."""
    states = sorted(exp.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except (OSError, json.JSONDecodeError):
        return set()  # being written right now
    out = set()
    for entry in data.get("trial_data", []):
        trial = json.loads(entry[0]) if isinstance(entry[0], str) else entry[0]
        if trial.get("status") == "TERMINATED":
            out.add(trial["trial_id"])
    return out


def _finished(exp: Path, epochs: int) -> dict[Path, bytes]:
    """Checkpoint bytes of the trials whose run finished ``epochs`` epochs and that the driver has
    recorded as finished."""
    done = {}
    for trial_id in _terminated(exp):
        p = exp / f"trial_{trial_id}" / "run" / "checkpoint.npz"
        try:
            data = p.read_bytes()
            with np.load(p) as z:
                if json.loads(str(z["state"]))["epoch"] >= epochs:
                    done[p] = data
        except Exception:  # noqa: BLE001  (being replaced right now)
            continue
    return done


def test_a_killed_driver_resumes_on_the_cluster_keeping_finished_trials(cluster):
    exp = cluster["root"] / "results" / "driver_dies"
    args = _args(cluster, "driver_dies", "--num-samples", "4", "--max-epochs", "3", "--grace-period", "3")
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_search.py"), *args],
                            env={**os.environ, **cluster["env"]}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (finished := _finished(exp, 3)):
            assert proc.poll() is None and time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies; the cluster stays up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (exp / "trials.json").exists()

    r = run_cli(*args, "--resume", env=cluster["env"], timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((exp / "trials.json").read_text())["trials"]
    assert len(rows) == 4 and all(t["status"] == "completed" and t["epochs"] == 3 for t in rows)
    for path, data in finished.items():  # finished before the kill: untouched since
        assert path.read_bytes() == data, path


def test_a_local_search_never_joins_a_cluster_started_on_the_machine(cluster, tmp_path):
    """With a `ray start` cluster up and RAY_ADDRESS naming it (as `ray start` tells users to set),
    a search without --address starts its own local Ray on 127.0.0.1 and runs there."""
    c = cluster
    r = run_cli("search", "--data", str(c["root"] / "data"), "--cache", str(c["root"] / "cache"),
                "--space", str(c["root"] / "tiny.yaml"), "--out", str(tmp_path), "--name", "local",
                "--verbose", "0", "--folds", "4", "--num-samples", "1", "--max-epochs", "1",
                env={"RAY_ADDRESS": c["address"]}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "joined the Ray cluster" not in r.stdout
    rows = json.loads((tmp_path / "local" / "trials.json").read_text())["trials"]
    assert len(rows) == 1 and rows[0]["status"] == "completed" and rows[0]["node"] == "127.0.0.1"
    assert rows[0]["node_id"] not in _node_ids(c)
