#!/usr/bin/env python
"""Latency of predicting one full-size BraTS case (240 x 240 x 155) on this machine's CPU.

One synthetic case with a BraTS-sized brain (about 137 x 171 x 141 voxels, so 2 x 2 x 2 windows of
128^3 like a real BraTS case) is written once as NIfTI. For each architecture (untrained weights:
latency does not depend on them) and each TTA setting, a fresh process runs exactly what
``run_search.py predict`` runs: read the NIfTI files, preprocess, sliding windows (overlap 0.5,
Gaussian blending, batch 2), restore to the original grid, write ``<id>.nii.gz``. The table gives
the wall time of each stage, the window evaluations, and the process's peak memory.

  python benchmarks/bench_predict.py [--configs small nvidia] [--tta 1 8]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from harness import answer, parser, print_table, run_worker  # (benchmarks/: the script's own folder)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"small": "cpu-small", "mid": "gpu-mid", "nvidia": "nvidia"}
SHAPE = (240, 240, 155)
BRAIN = (140, 172, 140)


def worker(preset_name: str, tta: int, data: str, out: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import unet3d  # noqa: F401, I001  (first: sets TensorFlow's oneDNN switch before keras loads it)
    import resource

    import keras

    from unet3d.training.checkpoint import save_model
    from unet3d.config import preset
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import load_case
    from unet3d.inference.predictor import Predictor, load_member, write_prediction
    from unet3d.training.model import build_unet3d, inference_model

    cfg = preset(preset_name)
    export = Path(out) / "model"
    export.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    model = inference_model(build_unet3d(cfg.model))
    save_model(model, export / "model.keras")
    cfg.save(export / "config.json")
    params = model.count_params()
    del model

    t0 = time.perf_counter()
    member = load_member(export)
    predictor = Predictor([member], tta=tta)
    (case,) = discover(data).cases
    t1 = time.perf_counter()
    loaded = load_case(case)
    t2 = time.perf_counter()
    shape: list[int] = []
    pred = predictor.predict(loaded, on_preprocessed=lambda s: shape.extend(s))
    t3 = time.perf_counter()
    write_prediction(pred, Path(out) / "pred")
    t4 = time.perf_counter()
    return {"params": params, "patch": list(cfg.data.crop), "load_model_s": t1 - t0,
            "read_s": t2 - t1, "predict_s": t3 - t2, "write_s": t4 - t3, "case_s": t4 - t1,
            "windows": pred.windows, "brain_box": shape,
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--configs", nargs="+", default=["small", "nvidia"], choices=list(CONFIGS))
    p.add_argument("--tta", nargs="+", type=int, default=[1, 8])
    args = p.parse_args()
    if args.worker:
        return answer(worker(**args.worker))

    sys.path.insert(0, str(ROOT))
    from unet3d.data.synthetic import write_synthetic_dataset

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_predict.") as tmp:
        data = Path(tmp) / "data"
        write_synthetic_dataset(data, 1, SHAPE, seed=1, brain_size=BRAIN)
        for name in args.configs:
            for tta in args.tta:
                out = Path(tmp) / f"{name}_{tta}"
                job = {"preset_name": CONFIGS[name], "tta": tta, "data": str(data), "out": str(out)}
                res = run_worker(__file__, job)
                rows.append((name, tta, res))
                print(f"  done: {name} tta {tta}: {res['case_s']:.1f} s", file=sys.stderr, flush=True)

    print(f"one {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} case, brain box "
          f"{'x'.join(map(str, rows[0][2]['brain_box']))}, overlap 0.5, batch 2, fp32")
    print_table([("config", "<7"), ("params", ">11,"), ("window", ">7"), ("flips", ">5"),
                 ("windows", ">7"), ("read s", ">7.2f"), ("predict s", ">9.1f"), ("write s", ">7.2f"),
                 ("case s", ">7.1f"), ("peak GiB", ">8.2f")],
                [(name, r["params"], f"{r['patch'][0]}^3", tta, r["windows"], r["read_s"], r["predict_s"],
                  r["write_s"], r["case_s"], r["peak_gib"]) for name, tta, r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
