"""Process-wide runtime defaults that must be in place before TensorFlow is imported.

TensorFlow 2.21 leaves its oneDNN kernels off on AMD CPUs, and 3D convolutions then run about 25x
slower (FACTS.md: 2.36 s vs 0.096 s per small training step). Turning it on is the single biggest
speed setting on CPU; a user's explicit TF_ENABLE_ONEDNN_OPTS wins. TF's C++ INFO logs are muted the
same way (the user's TF_CPP_MIN_LOG_LEVEL wins).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
