"""Experiment tracking next to TensorBoard: MLflow (``--mlflow URI``) and Weights & Biases
(``--wandb PROJECT``), through the libraries' own integrations.

MLflow: the search is a parent run (its options as parameters, the best score as a metric, the
best model and the report as artifacts); every trial is a child run (``mlflow.parentRunId``) with
its configuration as parameters, each epoch's metrics, its status and node. Under Ray the trial
runs come from Ray Tune's ``MLflowLoggerCallback`` (in the driver); under Keras Tuner from
:class:`MlflowSearch`'s trial hooks, called by the engine each epoch. ``mlflow.json`` in the
experiment folder keeps the parent run's id, so ``--resume`` logs into the same runs.

W&B: Ray Tune's ``WandbLoggerCallback``, one W&B run per trial in its trial folder
(``trial_*/wandb/offline-run-*``), offline unless ``WANDB_MODE=online`` (then with
``WANDB_API_KEY``); ``wandb sync`` uploads offline runs later.

Imported only when a search asks for tracking (MLflow and W&B are optional packages).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from search.spec import SearchError
from search.storage import ExperimentFolder

MLFLOW_FILE = "mlflow.json"  # the parent run, for --resume
MLFLOW_EXPERIMENT = "unet3d-search"  # unless MLFLOW_EXPERIMENT_NAME says otherwise (MLflow's own)
_SCHEMES = ("file", "http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def allow_file_store(uri: str) -> None:
    """MLflow 3 keeps its folder store in maintenance mode and refuses it unless allowed: it is the
    store that needs no server and no database (a shared folder on a cluster)."""
    if uri.startswith("file:"):
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"


def trial_runs(client: Any, experiment_id: str, parent: str,
               trial_id: str | None = None) -> dict[str, str]:
    """trial ID -> MLflow run ID of the parent run's trial runs (of ``trial_id`` only, if given)."""
    where = f"tags.mlflow.parentRunId = '{parent}'"
    if trial_id is not None:
        where += f" and tags.trial_id = '{trial_id}'"
    return {r.data.tags["trial_id"]: r.info.run_id
            for r in client.search_runs([experiment_id], filter_string=where)
            if "trial_id" in r.data.tags}


def check_mlflow(uri: str) -> str:
    """``--mlflow``'s tracking URI, made absolute (a file: URI or a bare folder); MLflow installed,
    a file: folder writable, a server answering. Touches nothing.

    Raises:
        SearchError: one line naming --mlflow and what is wrong.
    """
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SearchError(f"--mlflow {uri}: needs the Python package 'mlflow' (pip install "
                          f"'unet3d-search[tracking]')") from None
    scheme = uri.split(":", 1)[0].split("+", 1)[0] if ":" in uri else ""
    if scheme not in _SCHEMES:
        if "://" in uri or scheme and len(scheme) > 1:
            raise SearchError(f"--mlflow {uri}: not a tracking URI MLflow reads (file:FOLDER, "
                              f"http(s)://HOST:PORT, sqlite:///FILE, databricks, ...)")
        uri = f"file:{uri}"  # a bare folder, as MLflow takes it
        scheme = "file"
    if scheme == "file":
        folder = Path(uri.removeprefix("file://") if uri.startswith("file://")
                      else uri.removeprefix("file:")).expanduser().resolve()
        probe = folder if folder.exists() else folder.parent
        if folder.exists() and not folder.is_dir():
            raise SearchError(f"--mlflow {uri}: {folder} is a file, not a folder")
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            raise SearchError(f"--mlflow {uri}: cannot write to {probe}")
        allow_file_store(uri)
        return folder.as_uri()
    if scheme in ("http", "https"):
        _ping(uri)
    return uri


def _ping(uri: str) -> None:
    """A tracking server that does not answer in a few seconds is one line, not a minute of
    MLflow's retries."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5):
            pass
    except urllib.error.HTTPError:
        pass  # it answered (a server without /health, or behind a proxy)
    except (OSError, ValueError) as e:
        raise SearchError(f"--mlflow {uri}: no MLflow server answers there "
                          f"({getattr(e, 'reason', e)})") from None


def check_wandb(project: str) -> None:
    """``--wandb``: the package installed and, online, a key to log in with.

    Raises:
        SearchError: one line naming --wandb.
    """
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise SearchError(f"--wandb {project}: needs the Python package 'wandb' (pip install "
                          f"'unet3d-search[tracking]')") from None
    if wandb_mode() == "online" and not os.environ.get("WANDB_API_KEY"):
        raise SearchError(f"--wandb {project}: WANDB_MODE=online needs WANDB_API_KEY (or leave "
                          f"WANDB_MODE unset: runs are written offline, `wandb sync` uploads them)")


def wandb_mode() -> str:
    return os.environ.get("WANDB_MODE", "offline")


def _artifact_location(uri: str) -> str | None:
    """Where a new MLflow experiment keeps its artifacts: beside a sqlite database
    (``DB_FOLDER/mlartifacts``; MLflow's default is ``./mlruns`` of whatever folder the search
    was started from), the store's default for the others (a file: store's own folder, a server's
    artifact root)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
                / "mlartifacts").as_uri()
    return None


def mlflow_ui_command(uri: str) -> str:
    """The command that shows ``uri``'s runs in a browser: ``mlflow ui`` needs the full mlflow
    package (Flask), not only the client the tracking extra installs."""
    import importlib.util

    store = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
    ui = f"{store}mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    if importlib.util.find_spec("flask") is None:
        return f"pip install mlflow && {ui}"
    return ui


class MlflowSearch:
    """The search's parent run in MLflow and its trials' child runs.

    Created (or, for a resumed search, reopened from ``mlflow.json``) by :meth:`open`; the
    engines log trials through :class:`search.ray_adapters.MlflowTrials` (Ray) or
    :meth:`start_trial` / :meth:`log_epoch` / :meth:`end_trial` (Keras Tuner); :meth:`close` tags
    every trial run with the search's status for it, logs the best model and ends the parent run.
    """

    def __init__(self, uri: str, experiment_id: str, parent: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment_id, self.parent = uri, experiment_id, parent
        self.client = MlflowClient(uri)
        self._runs: dict[str, str] = {}

    @property
    def artifact_location(self) -> str:
        """Where this search's artifacts (best model, report) go: the MLflow experiment's."""
        return self.client.get_experiment(self.experiment_id).artifact_location

    @classmethod
    def open(cls, uri: str, experiment: Path, name: str, params: dict[str, Any]) -> MlflowSearch:
        """The parent run of the search in folder ``experiment``: reopened if ``mlflow.json``
        names one (a resumed search), else created, with ``params`` (the search's options)."""
        from mlflow.tracking import MlflowClient

        from unet3d.io_utils import atomic_write_json

        allow_file_store(uri)
        saved = experiment / MLFLOW_FILE
        client = MlflowClient(uri)
        if saved.exists():
            d = json.loads(saved.read_text())
            client.update_run(d["parent_run_id"], status="RUNNING")
            return cls(uri, d["experiment_id"], d["parent_run_id"])
        title = os.environ.get("MLFLOW_EXPERIMENT_NAME", MLFLOW_EXPERIMENT)
        found = client.get_experiment_by_name(title)
        eid = found.experiment_id if found else client.create_experiment(
            title, artifact_location=_artifact_location(uri))
        run = client.create_run(eid, run_name=name, tags={"experiment_folder": str(experiment),
                                                          "node": socket.gethostname()})
        pid = run.info.run_id
        for k, v in params.items():
            client.log_param(pid, k, v)
        atomic_write_json(saved, {"tracking_uri": uri, "experiment_id": eid,
                                  "parent_run_id": pid})
        return cls(uri, eid, pid)

    # Keras Tuner: the engine calls these (Ray Tune's callback does the same for Ray trials).

    def start_trial(self, trial_id: str, params: dict[str, Any]) -> None:
        run_id = trial_runs(self.client, self.experiment_id, self.parent, trial_id).get(trial_id)
        if run_id is None:
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"trial_{trial_id}",
                tags={"mlflow.parentRunId": self.parent, "trial_id": trial_id,
                      "node": socket.gethostname()}).info.run_id
            for k, v in params.items():
                self.client.log_param(run_id, k, v)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._runs[trial_id] = run_id

    def log_epoch(self, trial_id: str, epoch: int, record: dict[str, Any]) -> None:
        run_id = self._runs[trial_id]
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                self.client.log_metric(run_id, k, float(v), step=epoch)

    def end_trial(self, trial_id: str, status: str) -> None:
        """``status``: MLflow's (FINISHED, FAILED, KILLED)."""
        self.client.set_terminated(self._runs.pop(trial_id), status)

    def close(self, rows: list[Any], summary: dict[str, Any], experiment: Path,
              interrupted: bool) -> None:
        """Each trial run tagged with the search's status for it (completed, stopped early,
        error, interrupted; MLflow's own status says only whether the run ended); the parent run
        gets the search's summary metrics, the best model (best/, and retrained/all if any) and the
        report as artifacts, and ends (KILLED when Ctrl-C ended the search: --resume reopens it)."""
        c, pid = self.client, self.parent
        runs = trial_runs(c, self.experiment_id, pid)
        for r in rows:
            run_id = runs.get(r.trial_id)  # (a configuration pruned for memory has none)
            if run_id is not None:
                c.set_tag(run_id, "status", r.status)
                if r.error:
                    c.set_tag(run_id, "error", r.error[:5000])
        for key in ("best_score", "best_dice_mean", "trials", "trials_pruned"):
            if isinstance(summary.get(key), (int, float)):
                c.log_metric(pid, key, float(summary[key]))
        if summary.get("best_trial"):
            c.set_tag(pid, "best_trial", summary["best_trial"])
        folders = ExperimentFolder(experiment)
        for folder, name in ((folders.best.path, "best_model"),
                             (folders.retrained / "all", "retrained_model")):
            if folder.is_dir() and not interrupted:
                c.log_artifacts(pid, str(folder), name)
        for file in (folders.report, folders.results, folders.trials):
            if file.is_file():
                c.log_artifact(pid, str(file))
        c.set_terminated(pid, "KILLED" if interrupted else "FINISHED")
