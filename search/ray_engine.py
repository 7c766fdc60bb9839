"""Ray Tune engine: OptunaSearch (TPE, seeded) picks configurations, ASHA stops weak trials early.

NVIDIA's configuration (projected into the space) is the first point evaluated. Trials get
``cpus_per_trial`` / ``gpus_per_trial`` (fractional GPUs share a card: TensorFlow memory growth is
on), at most ``max_concurrent`` run at once, and a failing trial is retried ``max_failures`` times
from its last checkpoint. ASHA's time attribute is the epoch count or wall-clock seconds (so faster
configurations can earn more epochs in the same budget).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from search.context import SearchContext
from search.objective import METRIC, MODE
from search.results import TrialRow, row_from_history
from unet3d.errors import UserError


@dataclasses.dataclass(frozen=True)
class RayOptions:
    num_samples: int = 8
    max_epochs: int = 6
    grace_period: int = 1
    reduction_factor: int = 2
    time_attr: str = "epochs"          # "epochs" | "seconds"
    max_trial_seconds: float = 600.0   # ASHA's max_t when time_attr is "seconds"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2
    max_failures: int = 1
    address: str | None = None         # None: start a local Ray on 127.0.0.1
    num_cpus: int | None = None        # local Ray only
    seed: int = 0
    verbose: int = 1


class ClusterError(UserError, RuntimeError):
    """The Ray cluster named by --address cannot be reached or joined."""


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fails fast, with one line, when ``host:port`` does not accept connections (``ray.init`` would
    retry for a minute). "auto" is left to Ray (it reads RAY_ADDRESS or the local cluster file)."""
    import socket

    if address == "auto":
        return
    host, sep, port = address.rpartition(":")
    if address.startswith("ray://"):
        raise ClusterError(f"--address {address}: give the cluster's GCS address HOST:PORT (e.g. "
                           f"10.0.0.5:6379) or 'auto'; Ray Client (ray://) is not supported")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address {address}: expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"--address {address}: no Ray cluster answers there "
                           f"({e.strerror or type(e).__name__})") from None


def _is_loopback(address: str) -> bool:
    """True for a cluster on this machine's loopback (127.x.x.x:PORT, localhost:PORT)."""
    host = address.rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def cluster_summary() -> str:
    """One line about the connected Ray cluster: alive nodes and their total resources."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    res = ray.cluster_resources()
    return (f"{len(nodes)} node(s) ({', '.join(sorted({n['NodeManagerAddress'] for n in nodes}))}), "
            f"{res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs")


def connect(opts: RayOptions) -> None:
    """Connects to ``opts.address``, or starts a local Ray whose every service is on 127.0.0.1.

    Ray 2.60 swaps 127.0.0.1 for the machine's external address and listens on all interfaces,
    unless its "no cluster" mode is on (the switch Ray uses on Windows/macOS, read when Ray is
    imported). A local search needs no cluster, so that mode is set before Ray loads, inherited by
    every Ray process, and checked after start. The same mode lets a driver join a cluster bound to
    loopback (``--address 127.0.0.1:PORT``): otherwise Ray rewrites that address to the external
    one, where nothing listens.
    """
    if not opts.address or _is_loopback(opts.address):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    if ray.is_initialized():
        return
    common = dict(include_dashboard=False, log_to_driver=opts.verbose > 1,
                  configure_logging=True, logging_level="ERROR")
    if opts.address:
        _check_reachable(opts.address)
        try:
            ray.init(address=opts.address, **common)
        except Exception as e:  # noqa: BLE001  (Ray raises ConnectionError, RuntimeError, ...)
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ClusterError(f"--address {opts.address}: cannot join the Ray cluster ({msg})") \
                from None
        return
    ray.init(num_cpus=opts.num_cpus or os.cpu_count(), _node_ip_address="127.0.0.1", **common)
    addresses = {n["NodeManagerAddress"] for n in ray.nodes()}
    if addresses != {"127.0.0.1"}:
        ray.shutdown()
        raise RuntimeError(f"local Ray started on {sorted(addresses)} instead of 127.0.0.1 (was Ray "
                           f"imported before the search set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0?)")


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Ray's default packs every parameter into the name)."""
    return f"trial_{trial.trial_id}"


def trial_name(trial: Any) -> str:
    """``<creation index>_<trial id>``: Ray's experiment tag starts with the index (1, 2, ...), and
    the trainable reports it, so results keep the order the searcher proposed trials in."""
    index = str(getattr(trial, "experiment_tag", "")).split("_", 1)[0]
    return f"{index}_{trial.trial_id}" if index.isdigit() else str(trial.trial_id)


def _trainable(ctx: SearchContext, opts: RayOptions):
    from ray import tune

    from search.trainable import train_trial

    trainable = tune.with_parameters(train_trial, ctx=ctx.to_dict())
    n = ctx.workers_per_trial
    if n <= 1:
        return tune.with_resources(trainable, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    # The trial itself only coordinates: its bundle reserves memory, no CPU (Ray refuses all-zero
    # bundles). Then one bundle per Horovod worker: 1 CPU, or 1 GPU.
    worker = {"CPU": 1.0}
    if opts.gpus_per_trial:
        worker["GPU"] = 1.0
    return tune.with_resources(trainable, tune.PlacementGroupFactory(
        [{"memory": 256 * 2**20}] + [dict(worker) for _ in range(n)], strategy="PACK"))


def run(ctx: SearchContext, location: str, opts: RayOptions, *, resume: bool = False,
        log: Callable[[str], None] = print) -> list[TrialRow]:
    """Runs (or resumes) the search at ``location`` (an absolute path or a URI); a row per trial."""
    # Ray's TensorBoardX logger would write a second HParams session per trial (at trial end only);
    # the trials write their own, from the first epoch. CSV/JSON loggers are added explicitly below.
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    if not opts.address or _is_loopback(opts.address):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray loads: see connect
    import optuna
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from spaces.translate import nvidia_point, to_optuna

    connect(opts)
    if opts.address:
        log(f"joined the Ray cluster at {opts.address}: {cluster_summary()}")
    trainable = _trainable(ctx, opts)
    storage, name = location.rstrip("/").rsplit("/", 1)
    if resume:
        tuner = tune.Tuner.restore(location, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        space = ctx.search_space()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        searcher = OptunaSearch(space=to_optuna(space), metric=METRIC, mode=MODE,
                                points_to_evaluate=[nvidia_point(space)],
                                sampler=optuna.samplers.TPESampler(seed=opts.seed))
        if opts.max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=opts.max_concurrent)
        if opts.time_attr == "epochs":
            scheduler = ASHAScheduler(time_attr="training_iteration", max_t=opts.max_epochs,
                                      grace_period=opts.grace_period,
                                      reduction_factor=opts.reduction_factor)
        else:
            scheduler = ASHAScheduler(time_attr="time_total_s", max_t=opts.max_trial_seconds,
                                      grace_period=opts.grace_period,
                                      reduction_factor=opts.reduction_factor)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                        scheduler=scheduler, num_samples=opts.num_samples,
                                        max_concurrent_trials=opts.max_concurrent or None,
                                        trial_dirname_creator=trial_dirname,
                                        trial_name_creator=trial_name),
            run_config=tune.RunConfig(
                name=name, storage_path=storage, verbose=opts.verbose,
                callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=1, checkpoint_score_attribute=METRIC,
                    checkpoint_score_order=MODE)),
        )
    grid = tuner.fit()
    if ctx.workers_per_trial > 1:
        left = horovod_workers_alive()
        if left:
            log(f"warning: {left} Horovod worker process(es) still alive after the search")
    scheme = location.split("://", 1)[0] + "://" if "://" in location else ""
    return rows_from_grid(grid, ctx.max_epochs, scheme)


def horovod_workers_alive(wait_s: float = 10.0) -> int:
    """Horovod worker actors (processes titled ``ray::BaseHorovodWorker``) alive on this machine,
    after giving Ray ``wait_s`` to finish ending those of stopped trials."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = 0
        for p in psutil.process_iter(["cmdline"]):
            try:
                if any("BaseHorovodWorker" in part for part in (p.info["cmdline"] or [])[:1]):
                    alive += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def rows_from_grid(grid: Any, max_epochs: int, scheme: str = "") -> list[TrialRow]:
    """Rows from Ray's ResultGrid; checkpoint paths get ``scheme`` back for remote storage."""
    rows = []
    for result in grid:
        df = result.metrics_dataframe
        history: list[dict[str, Any]] = []
        if df is not None and len(df):
            keep = [c for c in df.columns if c.startswith(("val_", "loss", "learning_rate",
                                                          "throughput", "epoch", "timestamp",
                                                          "node_ip", "node_id", "workers"))]
            history = df[keep].to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name.split("_")[1]
        params = {k: v for k, v in (result.config or {}).items()}
        best_ckpt = ""
        try:
            ck = result.get_best_checkpoint(METRIC, MODE)
        except Exception:  # noqa: BLE001  (no scored checkpoint)
            ck = None
        if ck is None:
            ck = result.checkpoint
        if ck is not None:
            best_ckpt = scheme + ck.path if scheme else ck.path
        m = result.metrics or {}
        error = ""
        if result.error is not None:
            error = str(result.error).strip().splitlines()[-1][:300] if str(result.error) else \
                type(result.error).__name__
        rows.append(row_from_history(
            trial_id, params, history, max_epochs, error=error,
            index=int(m.get("trial_index", 0)), wall_s=float(m.get("time_total_s", 0.0)),
            node=str(m.get("node_ip", "")), node_id=str(m.get("node_id", "")), checkpoint=best_ckpt,
            run_dir=scheme + result.path if scheme else str(result.path)))
    return rows
