"""What an export request must be, checked without Keras or TensorFlow: `export` with a wrong path
answers in a second, not after the seconds TensorFlow takes to start (its command checks here
first; :func:`unet3d.export.exporter.export_run` checks the same again when called alone).
"""

from __future__ import annotations

from pathlib import Path

from unet3d.errors import UserError
from unet3d.folders import ExportFolder
from unet3d.io_utils import check_writable_dir


class ExportError(UserError, ValueError):
    """A folder that cannot be exported, or an --out that an export must not replace."""


def is_export(folder: Path) -> bool:
    """Whether ``folder`` is an export folder (this module's, of any version)."""
    export = ExportFolder(folder)
    return export.has_model() and not export.checkpoint.exists()


def check_export(source: str | Path, out: str | Path | None = None) -> tuple[Path, Path, bool]:
    """``(source, out, run)`` of an export request (see ``export_run``): ``run`` whether ``source``
    is a training run (else an export folder), ``out`` where the export goes.

    Raises:
        ExportError (or the PathError of an --out that cannot be written), naming the path.
    """
    source = Path(source)
    if not source.is_dir():
        raise ExportError(f"{source}: no such folder (a train --out folder or an export folder)")
    given = ExportFolder(source)  # (a run folder is read through the names both share)
    run = given.checkpoint.exists()
    if not given.config.is_file() or not (run or is_export(source)):
        raise ExportError(f"{source}: neither a training run (config.json, checkpoint.npz) nor an "
                          f"export folder (config.json, model.keras)")
    out = Path(out) if out is not None else (source / "export" if run else source)
    if out.exists() and out != source and not is_export(out):
        raise ExportError(f"--out {out}: exists and is not an export folder (it would be replaced)")
    check_writable_dir(out, "--out")
    return source, out, run
