"""The set-up builds Horovod against the installed TensorFlow with Gloo (multi-worker runs need it)."""

from __future__ import annotations

import subprocess
import sys


def test_horovod_tensorflow_is_built_with_gloo_and_runs_an_allreduce():
    code = (
        "import unet3d, tensorflow as tf, horovod.tensorflow as hvd\n"
        "hvd.init()\n"
        "assert hvd.gloo_built() and hvd.size() == 1\n"
        "x = hvd.allreduce(tf.constant([1.0, 3.0]), op=hvd.Average)\n"
        "print(x.numpy().tolist())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[1.0, 3.0]"
