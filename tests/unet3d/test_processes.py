"""Worker processes never run the caller's main script (unet3d.processes): preprocessing in two
processes from a script on standard input, a ``-c`` one-liner and a script without a
``if __name__ == "__main__":`` guard. Spawned children used to re-import ``__main__``: from stdin
that was ``FileNotFoundError: '.../<stdin>'`` then BrokenProcessPool; an unguarded script started
itself again in every child."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from pathlib import Path
from unet3d.data.discover import discover
from unet3d.data import preprocess
from unet3d.data.preprocess import prepare
preprocess.PARALLEL_MIN_BYTES = 0  # (tiny cases, in processes all the same)
root = Path(sys.argv[-1])
entries = prepare(discover(root / "data").cases, root / "cache", jobs=2)
print("PREPARED", len(entries), "__file__" in globals())
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from unet3d.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("procs")
    write_synthetic_dataset(root / "data", 4, (16, 16, 16), seed=3)
    return root


def _run(args: list[str], tmp_path: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)


@pytest.mark.parametrize("how", ["stdin", "-c", "unguarded script"])
def test_preprocessing_in_processes_works_from_any_main(how, data, tmp_path):
    root = tmp_path / "copy"
    import shutil

    shutil.copytree(data / "data", root / "data")
    if how == "stdin":
        r = _run(["-", str(root)], tmp_path, input=SCRIPT)
        has_file = True  # (python - sets __file__ to '<stdin>')
    elif how == "-c":
        r = _run(["-c", SCRIPT, str(root)], tmp_path)
        has_file = False
    else:
        (tmp_path / "job.py").write_text(SCRIPT)
        r = _run([str(tmp_path / "job.py"), str(root)], tmp_path)
        has_file = True
    assert r.returncode == 0, r.stderr[-3000:]
    # Once, by the parent only (an unguarded script run again by a child would print it too), and
    # the script's own __main__ is as it was.
    assert r.stdout.count("PREPARED") == 1 and f"PREPARED 4 {has_file}" in r.stdout, r.stdout
    assert len(list((root / "cache").glob("*/image.npy"))) == 4


def test_a_worker_that_dies_is_one_line_naming_the_work():
    from unet3d.processes import PoolError, worker_pool

    with pytest.raises(PoolError, match=r"^counting: a worker process stopped unexpectedly") as e:
        with worker_pool(2, "counting") as pool:
            list(pool.map(os._exit, [3, 3]))
    assert "\n" not in str(e.value)
