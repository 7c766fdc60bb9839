"""The processes this package runs itself load Keras without the two optional libraries Keras
imports for features it never uses (scikit-learn, matplotlib: ``unet3d.runtime.lean_keras``), and
both still import afterwards for whoever needs them (Keras Tuner's Bayesian oracle, the report);
the garbage collector, paused for that import, runs again and skips what the import made."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

PROBE = """
import gc, json, sys
{before}
import tensorflow, keras
loaded = {{name: name in sys.modules for name in ("sklearn", "matplotlib")}}
import keras_tuner.src.tuners.bayesian  # (scikit-learn's Gaussian process)
import matplotlib.pyplot
print(json.dumps({{"loaded": loaded, "loader": type(keras.__loader__).__name__,
                  "gc": [gc.isenabled(), gc.get_freeze_count()],
                  "hooks": [type(f).__name__ for f in sys.meta_path if "Keras" in type(f).__name__],
                  "model": keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])(
                      keras.ops.ones((1, 4))).shape[-1]}}))
"""


def _probe(before: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_keras_loads_without_sklearn_and_matplotlib_which_still_import_after():
    lean = _probe("from unet3d.runtime import lean_keras\nlean_keras()")
    assert lean["loaded"] == {"sklearn": False, "matplotlib": False}
    assert lean["loader"] == "SourceFileLoader" and lean["hooks"] == []  # (the hook is gone)
    assert lean["model"] == 2
    collecting, frozen = lean["gc"]
    assert collecting and frozen > 100_000  # (TensorFlow's and Keras's objects, about 430k)
    # The premise: Keras (through TensorFlow) does load both when left alone.
    plain = _probe("import unet3d")
    assert plain["loaded"] == {"sklearn": True, "matplotlib": True}
    assert plain["gc"] == [True, 0]


def test_the_command_line_loads_keras_lean():
    """run_search.main installs the hook (a refused command here, before Keras; then Keras)."""
    code = ("import sys, run_search\n"
            "assert run_search.main(['export', 'no-such-run']) == 2\n"
            "import keras\n"
            "print('sklearn' in sys.modules, 'matplotlib' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "False"]
