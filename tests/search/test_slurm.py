"""A search as a SLURM job (`run_search.py slurm`, search/slurm.py), against a real single-node SLURM:
Debian's slurmctld, slurmd and munged (installed by `make setup`), started here with a generated
slurm.conf on 127.0.0.1 and stopped at the end. The job's sbatch file is submitted with sbatch,
starts Ray, runs a tiny search, is cancelled with scancel mid-search, and its resubmission resumes
the search to an export; nothing of either job is left running."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import error_line, run_cli

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _conf(root: Path) -> str:
    return "\n".join([
        "ClusterName=unet3dtest", "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
        f"AuthInfo=socket={root}/munge/sock",
        # Every daemon on the address it is given (127.0.0.1), not on all interfaces.
        "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
        f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "KillWait=30",
        f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP", ""])


def _wait(what: str, ok, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ok()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node SLURM on 127.0.0.1; yields the environment its commands need (SLURM_CONF)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None
               and not Path("/usr/sbin", d).exists()]
    if missing:
        pytest.skip(f"SLURM cannot start here: {', '.join(missing)} not installed (make setup "
                    f"installs Debian's slurm-wlm and munge)")
    if os.geteuid() != 0:
        pytest.skip("SLURM cannot start here: slurmd must run as root to start jobs")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir()
    key = root / "munge" / "key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    (root / "slurm.conf").write_text(_conf(root))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    sbin = lambda name: shutil.which(name) or f"/usr/sbin/{name}"  # noqa: E731
    subprocess.run([sbin("munged"), "--force", f"--socket={root}/munge/sock",
                    f"--key-file={key}", f"--pid-file={root}/munge/pid",
                    f"--log-file={root}/munge/log", f"--seed-file={root}/munge/seed"],
                   check=True, timeout=30)
    procs = [subprocess.Popen([sbin("slurmctld"), "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT)]
    time.sleep(1)
    procs.append(subprocess.Popen([sbin("slurmd"), "-D", "-N", "localhost"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))

    def idle() -> bool:
        r = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True,
                           timeout=30)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    try:
        try:
            _wait("the SLURM node to be idle", idle, 60)
        except AssertionError:
            pytest.skip(f"SLURM's daemons did not start: {(root / 'slurmctld.log').read_text()[-500:]}"
                        f"{(root / 'slurmd.log').read_text()[-500:]}")
        yield {"env": env, "root": root}
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, timeout=30)
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        pid = (root / "munge" / "pid")
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


def _jobs(slurm) -> list[str]:
    r = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=slurm["env"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def _left(job: str) -> list[str]:
    """Processes of a job still alive: its Ray (temporary folder /tmp/ray-JOB) or its steps."""
    found = []
    for p in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if f"/tmp/ray-{job}" in cmd or (p.info["name"] == "slurmstepd" and f"[{job}." in cmd):
                found.append(cmd[:150])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _search(data: Path, cache: Path, space: Path) -> list[str]:
    return ["--data", str(data), "--cache", str(cache), "--space", str(space), "--num-samples", "3",
            "--max-epochs", "2", "--scheduler", "none", "--max-concurrent", "1", "--verbose", "0",
            "--name", "s"]


@pytest.mark.slow
def test_a_slurm_job_stops_at_its_time_limit_or_scancel_and_its_resubmission_finishes_it(
        slurm, tmp_path, monkeypatch):
    """Three jobs of one sbatch file: the first told that its time limit is near (the signal
    `#SBATCH --signal` sends) stops the search as Ctrl-C does; the second, resumed, is cancelled
    with scancel; the third resumes the search to its export."""
    from tiny_space import SPACE

    from search.slurm import submit
    from unet3d.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 6, (32, 32, 32), seed=1)
    (tmp_path / "tiny.yaml").write_text(SPACE)
    shared = tmp_path / "shared"
    shared.mkdir()
    r = run_cli("slurm", "--shared", str(shared), "--cpus-per-node", str(os.cpu_count()),
                "--time", "20:00", "--submit", "--",
                *_search(tmp_path / "data", tmp_path / "cache", tmp_path / "tiny.yaml"),
                env=slurm["env"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    script = shared / "unet3d-s.sbatch"
    first = re.search(r"submitted job (\d+)", r.stdout).group(1)
    assert f"sbatch {script}" in script.read_text()
    exp = shared / "results" / "s"
    log = lambda job: (shared / "slurm-logs" / f"unet3d-s-{job}.out").read_text()  # noqa: E731
    checkpoints = lambda: len(list(exp.glob("trial_*/checkpoint_*")))  # noqa: E731

    def stop(job: str, *how: str) -> str:
        seen = checkpoints()
        _wait(f"a new checkpoint in job {job}", lambda: checkpoints() > seen, 600, 1)
        assert job in _jobs(slurm), log(job)[-2000:]
        subprocess.run(["scancel", *how, job], env=slurm["env"], check=True, timeout=30)
        _wait(f"job {job} to end", lambda: job not in _jobs(slurm), 120)
        _wait(f"job {job}'s processes to end", lambda: not _left(job), 60)
        return log(job)

    # The time limit's warning (USR1 to the job's shell): the search stops as on Ctrl-C, saying
    # how it resumes, then the job stops Ray and ends by itself.
    text = stop(first, "--batch", "--signal=USR1")
    assert "Ray head 127.0.0.1:" in text and "the time limit is near: stopping" in text, text[-3000:]
    assert "resume with: python run_search.py search --resume" in text, text[-3000:]
    assert "search ended (exit 130); stopping Ray" in text, text[-3000:]  # (130: interrupted)

    # The same file again, through the Python API: it finds the experiment's search.json and
    # resumes it; cancelled with a plain scancel (every process of the job signalled at once).
    monkeypatch.setenv("SLURM_CONF", slurm["env"]["SLURM_CONF"])
    second = submit(script)
    text = stop(second)
    assert "resuming the search" in text and "cancelled: stopping the search" in text, text[-3000:]

    last = submit(script)
    _wait(f"job {last} to end", lambda: last not in _jobs(slurm), 900, 2)
    text = log(last)
    assert "resuming the search" in text and "search ended (exit 0)" in text, text[-3000:]
    trials = json.loads((exp / "trials.json").read_text())["trials"]
    assert len(trials) == 3 and all(t["status"] == "completed" for t in trials), trials
    assert (exp / "best" / "model.keras").exists()
    _wait(f"job {last}'s processes to end", lambda: not _left(last), 60)


@pytest.mark.parametrize("flags, says", [
    (["--partition", "gpu"], "--partition gpu: no such partition (the cluster has debug)"),
    (["--gpus-per-node", "1"], "--gpus-per-node 1: partition debug has no GPUs"),
    (["--", "--out", "/tmp"], "--out /tmp: outside the shared folder"),
    (["--", "--address", "10.0.0.1:6379"], "--address: the job starts its own Ray cluster"),
    (["--", "--engine", "keras-tuner"],
     "--engine keras-tuner: a SLURM job runs the search on the Ray cluster it starts"),
    (["--time", "soon"], "--time soon: not a SLURM time limit"),
])
def test_a_wrong_slurm_request_gets_one_line_and_nothing_is_written_or_submitted(
        slurm, tmp_path, flags, says):
    shared = tmp_path / "shared"
    shared.mkdir()
    if "--" not in flags:
        flags = [*flags, "--"]
    r = run_cli("slurm", "--shared", str(shared), "--submit", *flags, "--name", "x",
                env=slurm["env"], timeout=60)
    assert says in error_line(r)
    assert list(shared.iterdir()) == [] and _jobs(slurm) == []


def test_the_sbatch_file_is_written_without_slurm_and_names_the_missing_shared_folder(
        tmp_path, monkeypatch):
    """Without SLURM's commands on this machine the file is still written (to be submitted on the
    login node); through the Python API as the CLI does."""
    from search.slurm import SlurmError, SlurmJob

    monkeypatch.setenv("PATH", str(tmp_path))  # (no sinfo)
    job = SlurmJob(search_args=("--num-samples", "2"), shared=str(tmp_path / "nowhere"), name="n")
    with pytest.raises(SlurmError, match=r"--shared .*nowhere: no such folder"):
        job.write(tmp_path / "n.sbatch")
    assert not (tmp_path / "n.sbatch").exists()
    path = SlurmJob(search_args=("--num-samples", "2"), shared=str(tmp_path), name="n", nodes=2,
                    gpus_per_node=0, setup="source /shared/venv/bin/activate",
                    python=sys.executable).write(tmp_path / "n.sbatch")
    text = path.read_text()
    assert "#SBATCH --nodes=2" in text and "source /shared/venv/bin/activate" in text
    assert f"search --num-samples 2 --out {tmp_path}/results --name n --address" in text
    assert subprocess.run(["/bin/bash", "-n", str(path)]).returncode == 0  # (valid bash)
