"""The processes this package runs itself load Keras and TensorFlow without the optional libraries
they import for features it never uses (scikit-learn, matplotlib, pandas, JAX:
``unet3d.runtime.lean_keras``), and each still imports afterwards for whoever needs it (Keras
Tuner's Bayesian oracle, the report, Ray Tune's results, the JAX backend); the garbage collector,
paused for that import, runs again and skips what the import made."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

PROBE = """
import gc, json, sys
{before}
import tensorflow, keras
loaded = {{name: name in sys.modules for name in ("sklearn", "matplotlib", "pandas", "jax")}}
import keras_tuner.src.tuners.bayesian  # (scikit-learn's Gaussian process)
import matplotlib.pyplot, pandas, jax.numpy
assert float(jax.numpy.ones(3).sum()) == 3.0 and len(pandas.DataFrame({{"a": [1]}})) == 1
print(json.dumps({{"loaded": loaded,
                  "loaders": [type(m.__loader__).__name__ for m in (tensorflow, keras)],
                  "gc": [gc.isenabled(), gc.get_freeze_count()], "backend": keras.backend.backend(),
                  "hooks": [type(f).__name__ for f in sys.meta_path if "Lean" in type(f).__name__],
                  "model": keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])(
                      keras.ops.ones((1, 4))).shape[-1]}}))
"""


def _probe(before: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PROBE.format(before=before)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


NONE_LOADED = {"sklearn": False, "matplotlib": False, "pandas": False, "jax": False}


def test_keras_loads_without_sklearn_matplotlib_pandas_jax_which_still_import_after():
    lean = _probe("import os\nos.environ['KERAS_BACKEND'] = 'tensorflow'  # (as use_backend sets it)\n"
                  "from unet3d.runtime import lean_keras\nlean_keras()")
    assert lean["loaded"] == NONE_LOADED
    assert lean["loaders"] == ["SourceFileLoader"] * 2 and lean["hooks"] == []  # (the hook is gone)
    assert lean["model"] == 2
    collecting, frozen = lean["gc"]
    assert collecting and frozen > 100_000  # (TensorFlow's and Keras's objects, about 430k)
    # The JAX backend: JAX is not hidden from either import (Keras on JAX cannot load without it).
    jax = _probe("import os\nos.environ['KERAS_BACKEND'] = 'jax'\n"
                 "from unet3d.runtime import lean_keras\nlean_keras()")
    assert (jax["backend"], jax["model"], jax["hooks"]) == ("jax", 2, [])
    assert jax["loaded"] == {**NONE_LOADED, "jax": True}
    # The premise: TensorFlow and Keras do load all four when left alone.
    plain = _probe("import unet3d")
    assert plain["loaded"] == dict.fromkeys(NONE_LOADED, True)
    assert plain["gc"] == [True, 0]


def test_the_command_line_loads_keras_lean():
    """run_search.main installs the hook (a refused command here, before Keras; then Keras)."""
    code = ("import sys, run_search\n"
            "assert run_search.main(['export', 'no-such-run']) == 2\n"
            "import keras\n"
            "print(*(name in sys.modules for name in ('sklearn', 'matplotlib', 'pandas', 'jax')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False"] * 4
