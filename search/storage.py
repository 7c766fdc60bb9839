"""Where an experiment lives: a local (or shared) folder, or a cloud URI (s3://, gs://, ...).

Ray Tune writes trials and checkpoints to the storage path itself. The search's own files
(search.json, results, best/, TensorBoard's experiment record) are written to a local folder first
and, for a URI, uploaded at the end with pyarrow's filesystem layer (the one Ray uses), so any URI
Ray accepts works here too. ``file://`` URIs exercise the same path without a cloud.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from unet3d.folders import ExportFolder, Folder, RunFolder


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


class ExperimentFolder(Folder):
    """An experiment's folder (a local one, or the local copy of a remote one's own files): the
    path of every file a search writes in it, in one place.

    ::

        search.json        the search's spec and context (resume, report, retrain-best read it)
        trials.json        every trial's row and the summary; results.csv the same as a table
        report.html        the report
        best/              the best trial's export (unet3d.folders.ExportFolder)
        top/rank<k>_<id>/  the --top-k exports; ensemble/ and ensemble.json their ensemble
        pareto/rank_<k>/   a two-objective search's non-dominated exports
        race.json          the race's record; optuna.log Optuna's journal (the study)
        retrained/         retrain-best's runs and exports
        trial_<id>/run/    each trial's run folder (unet3d.folders.RunFolder)
    """

    SEARCH = "search.json"
    TRIALS = "trials.json"
    RESULTS = "results.csv"
    REPORT = "report.html"
    BEST = "best"
    TOP = "top"
    PARETO = "pareto"
    ENSEMBLE = "ensemble"
    ENSEMBLE_RECORD = "ensemble.json"
    RACE = "race.json"
    JOURNAL = "optuna.log"
    RETRAINED = "retrained"
    RUN = "run"  # a trial's run folder inside its trial folder

    @property
    def search(self) -> Path:
        return self.path / self.SEARCH

    @property
    def trials(self) -> Path:
        return self.path / self.TRIALS

    @property
    def results(self) -> Path:
        return self.path / self.RESULTS

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    @property
    def best(self) -> ExportFolder:
        return ExportFolder(self.path / self.BEST)

    def top(self, rank: int, trial_id: str) -> ExportFolder:
        return ExportFolder(self.path / self.TOP / f"rank{rank}_{trial_id}")

    def pareto(self, rank: int) -> ExportFolder:
        return ExportFolder(self.path / self.PARETO / f"rank_{rank}")

    @property
    def ensemble(self) -> Path:
        return self.path / self.ENSEMBLE

    @property
    def ensemble_record(self) -> Path:
        return self.path / self.ENSEMBLE_RECORD

    @property
    def race(self) -> Path:
        return self.path / self.RACE

    @property
    def journal(self) -> Path:
        return self.path / self.JOURNAL

    @property
    def retrained(self) -> Path:
        return self.path / self.RETRAINED

    def trial_run(self, trial_folder: str) -> RunFolder:
        """The run folder of the trial whose folder is named ``trial_folder`` (``trial_<id>``...)."""
        return RunFolder(self.path / trial_folder / self.RUN)

    def trial_runs(self) -> list[RunFolder]:
        """Every trial's run folder that exists, in name order."""
        return [RunFolder(p) for p in sorted(self.path.glob(f"trial_*/{self.RUN}"))]


class Experiment:
    """An experiment location.

    Attributes:
        location: what Ray gets (an absolute local path, or the URI).
        local: the folder the search writes its own files to (the experiment itself when local).
    """

    def __init__(self, out: str, name: str, staging: Path | None = None) -> None:
        self.name = name
        if is_uri(out):
            self.location = join(out, name)
            self.local = (staging or Path(tempfile.gettempdir()) / "unet3d-staging") / name
        else:
            self.local = (Path(out) / name).resolve()
            self.location = str(self.local)

    @property
    def folder(self) -> ExperimentFolder:
        """The local folder's files (the experiment's own, for a remote one)."""
        return ExperimentFolder(self.local)

    @property
    def remote(self) -> bool:
        return is_uri(self.location)

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.location)

    def exists(self) -> bool:
        """Whether the experiment already holds a search (its search.json)."""
        if not self.remote:
            return self.folder.search.exists()
        import pyarrow.fs

        fs, path = self._fs()
        found = fs.get_file_info(join(path, ExperimentFolder.SEARCH)).type
        return found != pyarrow.fs.FileType.NotFound

    def fetch_context(self) -> None:
        """For a resumed remote search: bring its search.json to the local folder."""
        if self.remote:
            fs, path = self._fs()
            self.local.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(join(path, ExperimentFolder.SEARCH)) as src:
                self.folder.search.write_bytes(src.read())

    def upload(self) -> None:
        """Copies the search's own files next to Ray's trials at the URI (no-op when local)."""
        if not self.remote:
            return
        import pyarrow.fs

        fs, path = self._fs()
        fs.create_dir(path, recursive=True)
        pyarrow.fs.copy_files(str(self.local), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                              destination_filesystem=fs)


def local_copy(checkpoint: str, into: Path) -> Path:
    """A local folder with a checkpoint's files: the folder itself, or a download of a URI."""
    if not is_uri(checkpoint):
        return Path(checkpoint)
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(checkpoint)
    if into.exists():
        shutil.rmtree(into)
    into.mkdir(parents=True)
    pyarrow.fs.copy_files(path, str(into), source_filesystem=fs,
                          destination_filesystem=pyarrow.fs.LocalFileSystem())
    return into
