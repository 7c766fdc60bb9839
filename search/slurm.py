"""A search as one SLURM batch job: the sbatch file that starts Ray on the allocated nodes, runs the
search against it and stops Ray when the search ends or the job is told to stop.

What the job does (the file says it again in its header):

- Ray's head on the batch host and one Ray worker per other node, each a ``srun`` step
  (``ray start --block``), with a token (``RAY_AUTH_MODE=token``) made for this job alone and a
  temporary folder of its own on each node's local disk. A one-node job keeps every Ray service
  on 127.0.0.1.
- ``run_search.py search ... --address HEAD:PORT``; the experiment lives under ``shared`` (a file
  system every node mounts at the same path). When the experiment's ``search.json`` is already
  there, the job resumes it (``--resume``): resubmitting the same file after a time limit or a
  ``scancel`` continues the search, keeping its finished trials and checkpoints.
- The search stops as it does on Ctrl-C ``GRACE`` seconds before the time limit
  (``#SBATCH --signal=B:USR1@GRACE``; ``scancel --batch --signal=USR1`` by hand); then Ray is
  stopped on every node and nothing of the job is left running. A plain ``scancel`` signals every
  process of the job at once, Ray's included: what is on disk (finished trials, checkpoints) is
  what the resubmitted job resumes from.

Why not ``ray symmetric-run`` (Ray 2.5x): it ends with ``ray stop``, which stops every Ray of the
user on the node (another job's too on a shared node), refuses to start where another job's Ray
runs, and treats SIGTERM (``scancel``, the time limit) as a crash: the search would not stop as on
Ctrl-C. Ray's own SLURM template (head + workers through ``srun``) is what this file follows.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from search.storage import ExperimentFolder
from unet3d.errors import UserError
from unet3d.io_utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
TIME = re.compile(r"^(\d+-)?\d{1,2}(:\d{2}){0,2}$|^\d+$")  # sbatch's --time forms


class SlurmError(UserError, ValueError):
    """A SLURM job that cannot be written or submitted as asked."""


def _sinfo(*args: str) -> list[str] | None:
    """Lines of ``sinfo -h ARGS`` on the cluster this machine submits to; None without SLURM's
    commands here (the file is then written without checking the cluster)."""
    if shutil.which("sinfo") is None:
        return None
    try:
        r = subprocess.run(["sinfo", "-h", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        raise SlurmError(f"sinfo: cannot ask the SLURM controller ({e})") from None
    if r.returncode != 0:
        line = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise SlurmError(line if line.startswith("sinfo:") else f"sinfo: {line}")
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


@dataclass(frozen=True)
class SlurmJob:
    """One search as a SLURM batch job.

    Attributes:
        search_args: the ``search`` command's own options, passed through (``--data``,
            ``--space``, ``--num-samples``, ...); ``--address`` is the job's to set.
        shared: a folder every node mounts at the same path; the experiment (``out``) must lie in it.
        out: where the search writes its experiment folder (default: ``shared``/results).
        name: the experiment's name (default: the job's name); fixed, so that a resubmitted job
            finds and resumes it.
        nodes: nodes of the job (Ray's head on the first, a Ray worker on each other).
        gpus_per_node: GPUs asked of each node (GRES gpu); 0 for a CPU search.
        cpus_per_node: CPUs asked of each node (default: what the partition gives one task).
        mem: memory per node in sbatch's form (``64G``; default: the partition's).
        time: the time limit in sbatch's form (``HH:MM:SS``, ``D-HH:MM``, minutes).
        partition: the partition (default: the cluster's default one).
        account: the account charged (default: the user's default).
        setup: shell lines run first on every node, e.g. ``module load cuda; source
            /shared/unet3d/.venv/bin/activate`` (default: none; this Python and checkout are used,
            so both must be on a path every node sees).
        job_name: the job's name (default: ``unet3d-NAME``).
        grace_s: seconds before the time limit at which the search is told to stop (as on
            Ctrl-C) so that it ends resumable before SLURM kills it.
        python: the Python the job runs the search and Ray with (default: ``python`` as found
            after ``setup``, or without ``setup`` this one).
    """

    search_args: tuple[str, ...]
    shared: str
    out: str = ""
    name: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    mem: str = ""
    time: str = "24:00:00"
    partition: str = ""
    account: str = ""
    setup: str = ""
    job_name: str = ""
    grace_s: int = 300
    python: str = ""

    def checked(self) -> SlurmJob:
        """The job with its defaults filled in, after every check (one ``SlurmError`` naming the
        option and what is wrong); asks the cluster (``sinfo``) where SLURM's commands are here."""
        for flag, value, low in (("--nodes", self.nodes, 1), ("--gpus-per-node", self.gpus_per_node, 0),
                                 ("--cpus-per-node", self.cpus_per_node, 1),
                                 ("--grace", self.grace_s, 0)):
            if value is not None and value < low:
                raise SlurmError(f"{flag} {value}: must be at least {low}")
        if not TIME.match(self.time):
            raise SlurmError(f"--time {self.time}: not a SLURM time limit (MINUTES, HH:MM:SS or "
                             f"DAYS-HH:MM)")
        if any(a == "--address" or a.startswith("--address=") for a in self.search_args):
            raise SlurmError("--address: the job starts its own Ray cluster and sets it")
        shared = Path(self.shared).expanduser().resolve()
        if not shared.is_dir():
            raise SlurmError(f"--shared {self.shared}: no such folder (a file system every node "
                             f"mounts at the same path)")
        if not os.access(shared, os.W_OK | os.X_OK):
            raise SlurmError(f"--shared {self.shared}: not writable")
        out = Path(self.out).expanduser().resolve() if self.out else shared / "results"
        if not out.is_relative_to(shared):
            raise SlurmError(f"--out {out}: outside the shared folder {shared} (other nodes "
                             f"could not write the experiment)")
        name = self.name or self.job_name.removeprefix("unet3d-") or "slurm-search"
        if "/" in name or name in (".", ".."):
            raise SlurmError(f"--name {name}: a folder name, without '/'")
        self._check_cluster()
        return SlurmJob(**{**self.__dict__, "shared": str(shared), "out": str(out), "name": name,
                           "job_name": self.job_name or f"unet3d-{name}",
                           "python": self.python or ("python" if self.setup else sys.executable)})

    def _check_cluster(self) -> None:
        parts = _sinfo("-o", "%P")
        if parts is None:
            return
        known = [p.rstrip("*") for p in parts]
        default = next((p.rstrip("*") for p in parts if p.endswith("*")), known[0] if known else "")
        if self.partition and self.partition not in known:
            raise SlurmError(f"--partition {self.partition}: no such partition (the cluster has "
                             f"{', '.join(known) or 'none'})")
        part = self.partition or default
        if self.gpus_per_node:
            gres = _sinfo("-p", part, "-o", "%G") or []
            if not any("gpu" in g for g in gres):
                raise SlurmError(f"--gpus-per-node {self.gpus_per_node}: partition {part} has no "
                                 f"GPUs (no node with GRES gpu)")

    @property
    def experiment(self) -> ExperimentFolder:
        return ExperimentFolder(Path(self.out) / self.name)

    def script(self, path: str | Path = "{this file}") -> str:
        """The sbatch file (of a checked job) that will be written at ``path``."""
        q = shlex.quote
        logs = Path(self.shared) / "slurm-logs"
        directives = [f"--job-name={self.job_name}", f"--nodes={self.nodes}",
                      "--ntasks-per-node=1", f"--time={self.time}",
                      f"--output={logs}/%x-%j.out", "--open-mode=append",
                      f"--signal=B:USR1@{self.grace_s}", f"--chdir={os.getcwd()}"]
        directives += [f"--cpus-per-task={self.cpus_per_node}"] if self.cpus_per_node else []
        directives += [f"--gpus-per-node={self.gpus_per_node}"] if self.gpus_per_node else []
        directives += [f"--mem={self.mem}"] if self.mem else []
        directives += [f"--partition={self.partition}"] if self.partition else []
        directives += [f"--account={self.account}"] if self.account else []
        search = [a for a in self.search_args if a != "--resume"]
        for flag, value in (("--out", self.out), ("--name", self.name)):
            if not any(a == flag or a.startswith(f"{flag}=") for a in search):
                search += [flag, value]
        exp = self.experiment
        return _TEMPLATE.format(
            directives="\n".join(f"#SBATCH {d}" for d in directives),
            header=_header(self, logs, str(path)), setup=self.setup or "# (no setup: --setup)",
            python=q(self.python), cli=q(str(ROOT / "run_search.py")), nodes=self.nodes,
            gpus=self.gpus_per_node, search=" ".join(q(a) for a in search),
            state=q(str(exp.search)), out=q(self.out), name=q(self.name))

    def write(self, path: str | Path) -> Path:
        """Writes the sbatch file (checked first; under a temporary name, then renamed)."""
        job = self.checked()
        path = Path(path).expanduser()
        if not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
            raise SlurmError(f"--script {path}: its folder does not exist or is not writable")
        text = job.script(path.resolve())
        (Path(job.shared) / "slurm-logs").mkdir(exist_ok=True)
        atomic_write_text(path, text)
        path.chmod(0o755)
        return path


def submit(path: str | Path, *extra: str) -> str:
    """``sbatch EXTRA PATH``; returns the job id."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch: not found (submit from a SLURM login node, or submit the "
                         "written file there)")
    r = subprocess.run(["sbatch", "--parsable", *extra, str(path)], capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        line = (r.stderr.strip().splitlines() or ["failed"])[-1]
        raise SlurmError(line if line.startswith("sbatch:") else f"sbatch: {line}")
    return r.stdout.strip().split(";")[0]


def _header(job: SlurmJob, logs: Path, path: str) -> str:
    return "\n".join(f"# {line}" if line else "#" for line in [
        f"The search {job.name!r} as a SLURM job, written by `run_search.py slurm`.",
        "",
        f"  submit:   sbatch {path}",
        "            (resubmitting it resumes the search)",
        "  watch:    squeue --me;  tail -f " + f"{logs}/{job.job_name}-JOBID.out",
        "  stop:     scancel --batch --signal=USR1 JOBID   (the search stops as on Ctrl-C)",
        "            or scancel JOBID   (at once; what is on disk is kept); resubmit to resume",
        f"  results:  {job.out}/{job.name}",
        "",
        "Ray runs on the job's nodes only, with a token made for this job; the search is told to",
        f"stop {job.grace_s} s before the time limit, so that it ends resumable; a chain of jobs:",
        f"  sbatch --dependency=afterany:JOBID {path}",
    ])


# The job. Bash: `trap` runs while the shell `wait`s, so the search and the Ray steps run in the
# background. The Ray steps are srun steps; their processes die with the step (srun forwards the
# TERM this file sends) and `ray start --block`'s reaper stops the rest.
_TEMPLATE = """#!/bin/bash
{directives}
{header}
set -uo pipefail
{setup}
PYTHON={python}
CLI={cli}
NODES={nodes}
GPUS={gpus}
EXPERIMENT_STATE={state}

export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))')
export RAY_AUTH_TOKEN
export RAY_USAGE_STATS_ENABLED=0
RAY_TMP=/tmp/ray-$SLURM_JOB_ID
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
CPUS=${{SLURM_CPUS_PER_TASK:-${{SLURM_CPUS_ON_NODE:-1}}}}
if [ "$NODES" -eq 1 ]; then
    HEAD_IP=127.0.0.1                         # one node: every Ray service stays on loopback
    export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
else
    HEAD_IP=$(hostname --ip-address | awk '{{print $1}}')
fi
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # (the batch host)
echo "job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: Ray head $HEAD_IP:$PORT, $CPUS CPUs and $GPUS GPUs per node"

RAY=("$PYTHON" -m ray.scripts.scripts start --block --temp-dir="$RAY_TMP" --num-cpus="$CPUS"
     --num-gpus="$GPUS" --include-dashboard=false --disable-usage-stats)
srun --nodes=1 --ntasks=1 -w "$HEAD" "${{RAY[@]}}" --head --node-ip-address="$HEAD_IP" \\
    --port="$PORT" &
STEPS=($!)

SEARCH_PID=
stop_search() {{  # the search takes SIGTERM as a first Ctrl-C, and ignores it repeated
    echo "$(date +%T) $1: stopping the search as on Ctrl-C (resubmit this file to resume it)"
    [ -n "$SEARCH_PID" ] && kill -TERM "$SEARCH_PID" 2>/dev/null
}}
trap 'stop_search "the time limit is near"' USR1
trap 'stop_search "cancelled"' TERM INT

ray_nodes() {{  # waits (5 minutes at most) until the cluster has $1 live nodes
    "$PYTHON" - "$HEAD_IP:$PORT" "$1" <<'WAIT'
import sys, time, ray
address, nodes = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 300
while True:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        alive = sum(1 for n in ray.nodes() if n["Alive"])
        ray.shutdown()
        if alive >= nodes:
            break
    except Exception:
        pass
    if time.monotonic() > deadline:
        sys.exit(f"Ray did not start on {{nodes}} node(s) at {{address}} in 300 s")
    time.sleep(2)
print(f"Ray is up on {{nodes}} node(s)")
WAIT
}}
# The workers join once the head answers (a worker that finds no head gives up).
ray_nodes 1
ready=$?
if [ $ready -eq 0 ] && [ "$NODES" -gt 1 ]; then
    srun --nodes=$((NODES - 1)) --ntasks=$((NODES - 1)) --exclude="$HEAD" "${{RAY[@]}}" \\
        --address="$HEAD_IP:$PORT" &
    STEPS+=($!)
    ray_nodes "$NODES"
    ready=$?
fi

rc=1
if [ $ready -eq 0 ]; then
    if [ -f "$EXPERIMENT_STATE" ]; then
        echo "resuming the search (its search.json is there)"
        "$PYTHON" "$CLI" search --resume --out {out} --name {name} --address "$HEAD_IP:$PORT" &
    else
        "$PYTHON" "$CLI" search {search} --address "$HEAD_IP:$PORT" &
    fi
    SEARCH_PID=$!
    while kill -0 "$SEARCH_PID" 2>/dev/null; do wait "$SEARCH_PID"; done
    wait "$SEARCH_PID"; rc=$?
fi
trap - USR1 TERM INT
echo "$(date +%T) search ended (exit $rc); stopping Ray"
kill -TERM "${{STEPS[@]}}" 2>/dev/null
wait "${{STEPS[@]}}" 2>/dev/null
exit $rc
"""
