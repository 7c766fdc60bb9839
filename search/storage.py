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


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


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
    def remote(self) -> bool:
        return is_uri(self.location)

    def _fs(self):
        import pyarrow.fs

        return pyarrow.fs.FileSystem.from_uri(self.location)

    def exists(self) -> bool:
        """Whether the experiment already holds a search (its search.json)."""
        if not self.remote:
            return (self.local / "search.json").exists()
        import pyarrow.fs

        fs, path = self._fs()
        return fs.get_file_info(join(path, "search.json")).type != pyarrow.fs.FileType.NotFound

    def fetch_context(self) -> None:
        """For a resumed remote search: bring its search.json to the local folder."""
        if self.remote:
            fs, path = self._fs()
            self.local.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(join(path, "search.json")) as src:
                (self.local / "search.json").write_bytes(src.read())

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
