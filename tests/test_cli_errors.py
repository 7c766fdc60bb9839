"""Bad command lines: one clear line naming the flag or file, exit code 2, no traceback, and nothing
written. Every case here fails before any training, so each costs one CLI start-up."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import error_line, run_cli

from unet3d.errors import OptionError, UserError
from unet3d.io_utils import PathError, check_writable_dir, check_writable_file


def _tree(*roots: Path) -> set[str]:
    return {str(p) for r in roots for p in r.rglob("*")}


def _fails(*args: str, names: str, untouched: tuple[Path, ...]) -> str:
    """Runs the CLI; checks exit 2, one "error:" line naming ``names``, no traceback, and that no
    file or folder appeared (or went) under ``untouched``. Returns the error line."""
    before = _tree(*untouched)
    line = error_line(run_cli(*args, timeout=180), alone=True)
    assert names in line, line
    assert _tree(*untouched) == before
    return line


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A regular file: a path below it cannot be created, not even by root (tests run as root, so
    a read-only folder would not stop them)."""
    f = tmp_path / "x.txt"
    f.write_text("not a folder\n")
    return f


@pytest.fixture
def experiment(tmp_path) -> Path:
    """A stand-in experiment folder: enough for checks that run before search.json is read."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "search.json").write_text("{}\n")
    return exp


# 1. Output paths that cannot be written -------------------------------------------------------

def _message(check, path: Path, what: str = "--out") -> str:
    with pytest.raises(PathError) as ei:
        check(path, what)
    return str(ei.value)


def test_the_helpers_name_the_option_and_the_reason(a_file, tmp_path, monkeypatch):
    assert check_writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert check_writable_file(a_file, "--out") == a_file  # an existing file is overwritten
    assert _message(check_writable_dir, a_file / "o") == f"--out {a_file}/o: {a_file} is a file, not a folder"
    assert _message(check_writable_dir, a_file, "--cache") == f"--cache {a_file}: is a file, not a folder"
    assert _message(check_writable_file, tmp_path) == f"--out {tmp_path}: is a folder, not a file"
    assert _message(check_writable_file, a_file / "r.html") == (
        f"--out {a_file}/r.html: {a_file} is a file, not a folder")
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert "dangling is a broken symbolic link" in _message(check_writable_dir, tmp_path / "dangling" / "o")
    # A read-only folder (root ignores the mode bits, so os.access is told to say no).
    monkeypatch.setattr("unet3d.io_utils.os.access", lambda p, mode: False)
    assert _message(check_writable_dir, tmp_path / "o") == f"--out {tmp_path}/o: {tmp_path} is not writable"
    assert _message(check_writable_file, a_file) == f"--out {a_file}: {tmp_path} is not writable"
    assert issubclass(PathError, UserError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "x.txt"]


@pytest.mark.parametrize("case", ["synth --out", "prepare --cache", "train --out", "train --cache",
                                  "predict --out", "evaluate --out", "evaluate --pred", "report --out"])
def test_an_unwritable_output_path_is_one_line(case, synth16, a_file, experiment, tmp_path):
    bad = str(a_file / "sub")
    cache = str(tmp_path / "cache")
    args = {
        "synth --out": ["synth", "--out", bad, "--cases", "1", "--shape", "16", "16", "16"],
        "prepare --cache": ["prepare", "--data", str(synth16), "--cache", bad],
        "train --out": ["train", "--data", str(synth16), "--cache", cache, "--out", bad],
        "train --cache": ["train", "--data", str(synth16), "--cache", bad, "--out", str(tmp_path / "o")],
        "predict --out": ["predict", "--model", str(tmp_path / "m"), "--input", str(synth16),
                          "--out", bad],
        "evaluate --out": ["evaluate", "--pred", str(experiment), "--data", str(synth16), "--out",
                           str(a_file / "e.csv")],
        "evaluate --pred": ["evaluate", "--pred", str(a_file), "--data", str(synth16)],
        "report --out": ["report", str(experiment), "--out", str(a_file / "r.html")],
    }[case]
    flag = case.split()[1]
    line = _fails(*args, names=flag, untouched=(tmp_path, synth16))
    assert f"{a_file} is a file, not a folder" in line or f"{a_file}: is a file, not a folder" in line


# 2. synth's counts and sizes ---------------------------------------------------------------------

@pytest.mark.parametrize("flags, names", [
    (["--cases", "0"], "--cases 0"),
    (["--shape", "0", "0", "0"], "--shape 0 0 0"),
    (["--shape", "15", "64", "64"], "--shape 15 64 64"),  # below the generator's minimum, 16
    (["--seed", "-1"], "--seed -1"),
])
def test_synth_rejects_impossible_counts_and_sizes(flags, names, tmp_path):
    _fails("synth", "--out", str(tmp_path / "d"), *flags, names=names, untouched=(tmp_path,))


@pytest.mark.parametrize("kwargs", [{"n_cases": -2}, {"shape": (-16, 16, 16)}, {"shape": (16, 16)},
                                    {"shape": (8, 16, 16)}, {"seed": -1}])
def test_the_synth_library_checks_the_same_rules(kwargs, tmp_path):
    from unet3d.data.synthetic import write_synthetic_dataset

    with pytest.raises(OptionError, match=r"^--(cases|shape|seed) "):
        write_synthetic_dataset(tmp_path / "d", **{"n_cases": 1, "shape": (16, 16, 16), **kwargs})
    assert not (tmp_path / "d").exists()


# 3. retrain-best --epochs --------------------------------------------------------------------------

def test_retrain_best_rejects_epochs_below_one(experiment, tmp_path):
    """It used to train twice the search's epochs instead (``epochs or 2 * ...``)."""
    _fails("retrain-best", str(experiment), "--epochs", "0", names="--epochs 0", untouched=(tmp_path,))


# 4. A file where a folder is expected ----------------------------------------------------------

@pytest.mark.parametrize("command", ["prepare", "evaluate"])  # train and search: as prepare
def test_a_file_as_data_folder_says_it_is_a_file(command, a_file, tmp_path):
    args = {"prepare": ["prepare", "--data", str(a_file), "--cache", str(tmp_path / "c")],
            "evaluate": ["evaluate", "--pred", str(tmp_path), "--data", str(a_file),
                         "--out", str(tmp_path / "e.csv")]}[command]
    line = _fails(*args, names=str(a_file), untouched=(tmp_path,))
    assert "is a file, not a dataset folder" in line and "does not exist" not in line


def test_a_nifti_file_as_predict_input_says_it_is_a_file(synth16, tmp_path):
    nifti = next(synth16.glob("*/*_t1.nii.gz"))
    line = _fails("predict", "--model", str(tmp_path / "m"), "--input", str(nifti), "--out",
                  str(tmp_path / "p"), names=str(nifti), untouched=(tmp_path, synth16))
    assert "is a file, not a case folder" in line


def test_evaluate_names_a_pred_file_with_an_explicit_out(synth16, a_file, tmp_path):
    line = _fails("evaluate", "--pred", str(a_file), "--data", str(synth16), "--out",
                  str(tmp_path / "e.csv"), names=str(a_file), untouched=(tmp_path, synth16))
    assert "is a file, not a prediction folder" in line


# 5. A failed prepare leaves no cache behind -------------------------------------------------------

def test_a_failed_prepare_leaves_no_cache_folder(synth16, tmp_path):
    data = tmp_path / "data"
    for case in sorted(p for p in synth16.iterdir() if p.is_dir() and not p.name.startswith("."))[:2]:
        shutil.copytree(case, data / case.name)
    first = sorted(data.iterdir())[0]
    t1 = first / f"{first.name}_t1.nii.gz"
    t1.write_bytes(t1.read_bytes()[:400])  # truncated
    for cache in (tmp_path / "cache" / "deeper", None):  # given, and the default DATA/.unet3d-cache
        flags = ["--cache", str(cache)] if cache else []
        line = _fails("prepare", "--data", str(data), *flags, names=str(t1), untouched=(tmp_path,))
        assert "truncated" in line
    assert not (tmp_path / "cache").exists() and not (data / ".unet3d-cache").exists()
    # A cache folder that existed before is kept, and gets no entry for the bad case.
    (tmp_path / "kept").mkdir()
    _fails("prepare", "--data", str(data), "--cache", str(tmp_path / "kept"), names=str(t1),
           untouched=(tmp_path,))
    assert (tmp_path / "kept").is_dir()


# 6. Impossible numbers in the other commands --------------------------------------------------

@pytest.mark.parametrize("flags, names", [
    (["--epochs", "0"], "--epochs 0"),
    (["--steps-per-epoch", "0"], "--steps-per-epoch 0"),
    (["--fold", "7", "--folds", "5"], "--fold 7"),
    (["--workers", "0"], "--workers 0"),
    (["--jobs", "0"], "--jobs 0"),
])
def test_train_rejects_impossible_numbers(flags, names, synth16, tmp_path):
    line = _fails("train", "--data", str(synth16), "--cache", str(tmp_path / "c"), "--out",
                  str(tmp_path / "o"), *flags, names=names, untouched=(tmp_path, synth16))
    if names not in ("--workers 0", "--jobs 0"):
        assert re.search(r"(train|data)\.\w+=", line), line  # and the config field it sets


def test_train_over_another_runs_checkpoint_is_refused_before_the_data_is_prepared(synth16,
                                                                                  tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.npz").write_bytes(b"a run's")
    _fails("train", "--data", str(synth16), "--cache", str(tmp_path / "c"), "--out", str(run),
           names=f"{run / 'checkpoint.npz'}: a checkpoint already exists; pass --resume",
           untouched=(tmp_path, synth16))
    assert not (tmp_path / "c").exists()  # (no cache: refused before any case was read)


@pytest.mark.parametrize("flags, names", [
    (["--top-k", "0"], "--top-k 0"),  # also when --model is not a search experiment
    (["--min-et-volume", "nan"], "--min-et-volume nan"),  # --tta, --overlap: test_predict.py
])
def test_predict_rejects_impossible_numbers(flags, names, synth16, tmp_path):
    _fails("predict", "--model", str(tmp_path / "m"), "--input", str(synth16), "--out",
           str(tmp_path / "p"), *flags, names=names, untouched=(tmp_path, synth16))


def test_evaluate_rejects_zero_jobs(synth16, tmp_path):
    (tmp_path / "pred").mkdir()
    _fails("evaluate", "--pred", str(tmp_path / "pred"), "--data", str(synth16), "--jobs", "0",
           names="--jobs 0", untouched=(tmp_path, synth16))


# Backends: a combination that cannot train is one line, before anything is written ---------------

@pytest.mark.parametrize("case", ["train", "search"])
def test_horovod_workers_under_jax_are_one_line(case, synth16, tmp_path):
    args = {"train": ["train", "--data", str(synth16), "--cache", str(tmp_path / "cache"),
                      "--backend", "jax", "--workers", "2", "--out", str(tmp_path / "o")],
            "search": ["search", "--data", str(synth16), "--cache", str(tmp_path / "cache"),
                       "--backend", "jax", "--workers-per-trial", "2", "--out", str(tmp_path / "o")]}
    names = {"train": "--workers 2 with train.backend jax", "search": "--backend jax with "
             "--workers-per-trial 2"}[case]
    line = _fails(*args[case], names=names, untouched=(tmp_path, synth16))
    assert "Horovod workers train under tensorflow only" in line


# 7. export: what it cannot export, and an --out it must not replace ---------------------------

def test_export_refuses_what_is_not_a_run_and_an_out_that_is_not_an_export(a_file, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}\n")
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine\n")
    line = _fails("export", str(tmp_path / "nope"), names=str(tmp_path / "nope"),
                  untouched=(tmp_path,))
    assert "no such folder" in line
    line = _fails("export", str(tmp_path / "run"), names=str(tmp_path / "run"), untouched=(tmp_path,))
    assert "neither a training run" in line
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    line = _fails("export", str(tmp_path / "run"), "--out", str(keep), names=f"--out {keep}",
                  untouched=(tmp_path,))
    assert "exists and is not an export folder" in line
    line = _fails("export", str(tmp_path / "run"), "--out", str(a_file / "x"),
                  names=f"--out {a_file / 'x'}", untouched=(tmp_path,))


def test_a_cpu_command_does_not_log_tensorflows_failed_cuinit(tmp_path):
    """On a machine without an NVIDIA driver TensorFlow's first device query logs "failed call to
    cuInit: ... (303)" at its error level: it reads like a crash on every CPU command. Every entry
    point imports unet3d first, which mutes it there; a log level the user sets still wins."""
    import subprocess
    import sys

    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver")
    code = ("import unet3d, tensorflow as tf; tf.config.list_physical_devices('GPU'); "
            "print('devices listed')")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0 and "devices listed" in r.stdout, r.stderr[-2000:]
    assert "cuInit" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert "failed call to cuInit" in r.stderr, r.stderr  # (the premise: TF does log it)
