"""Scoring speed at BraTS size: our per-region scores (whole-image Dice, HD95, NSD and the lesion-wise
scores) against panoptica with the official BraTS configuration, in the same run, on the same masks.

Cases: synthetic BraTS 2024 post-treatment volumes of 240 x 240 x 155 (a brain of about 140 x 172 x
140 voxels, two lesions in most cases, a resection cavity in some), and a prediction made from each
reference by shifting it a voxel, dropping its second lesion and adding a false one, so matching has
work to do. Ours runs in this process; panoptica in its own venv (``scripts/panoptica_env.sh``), timed
there around its ``evaluate`` call only. Prints a table per case and region and whether the lesion
counts and lesion-wise Dice agree.

    python benchmarks/bench_evaluate.py [--cases 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PANOPTICA_TIMER = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import panoptica_ref as ref
from panoptica.utils.citation_reminder import disable_citation_reminder
disable_citation_reminder()
ev = ref.brats_evaluator()
data = np.load(sys.argv[1])
out = {}
for name in sorted({k.split("__", 1)[1] for k in data.files}):
    t0 = time.perf_counter()
    s = ref.score(ev, data["pred__" + name], data["ref__" + name], tuple(data["spacing__" + name]))
    out[name] = {**s, "seconds": time.perf_counter() - t0}
print(json.dumps(out))
"""


def _prediction(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect prediction of ``label`` (file values): shifted one voxel, its smallest
    tumour component dropped, a false enhancing blob added away from the tumour."""
    pred = np.roll(label, 1, axis=int(rng.integers(3)))
    comps, n = ndimage.label(pred > 0, structure=np.ones((3, 3, 3)))
    if n > 1:
        sizes = np.bincount(comps.ravel())[1:]
        pred[comps == 1 + int(np.argmin(sizes))] = 0
    free = np.argwhere((ndimage.distance_transform_edt(label == 0) > 20) & (label == 0))
    c = free[rng.integers(len(free))]
    pred[tuple(slice(max(0, x - 3), x + 3) for x in c)] = 3
    return pred


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=3)
    args = p.parse_args()

    from unet3d.data.synthetic import synth_case
    from unet3d.evaluation.metrics import region_scores
    from unet3d.labels import BUILTIN

    venv = ROOT / ".venv-panoptica" / "bin" / "python"
    if not venv.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "panoptica_env.sh")], cwd=ROOT, check=True)
    scheme = BUILTIN["brats-2024-gli"]
    spacing = (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    ours: dict[str, dict] = {}
    masks: dict[str, np.ndarray] = {}
    for i in range(args.cases):
        _, label = synth_case((240, 240, 155), 1000 + i, brain_size=(140, 172, 140),
                              layout="brats2024", cavity=True)
        pred = _prediction(label, rng)
        t0 = time.perf_counter()
        s = region_scores(scheme.to_classes(pred), scheme.to_classes(label), scheme, spacing,
                          lesionwise=True, surface=True)
        seconds = time.perf_counter() - t0
        pr, rr = scheme.labels_to_regions(pred), scheme.labels_to_regions(label)
        for k, r in enumerate(scheme.regions):
            name = f"case{i}_{r}"
            ours[name] = {key: s[f"{key}_{r}"] for key in ("lesion_tp", "lesion_fp", "lesion_fn",
                                                           "lesionwise_dice")}
            ours[name]["case_seconds"] = seconds
            masks[f"pred__{name}"] = pr[..., k].astype(np.uint8)
            masks[f"ref__{name}"] = rr[..., k].astype(np.uint8)
            masks[f"spacing__{name}"] = np.asarray(spacing)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "masks.npz"
        np.savez_compressed(npz, **masks)
        run = subprocess.run([str(venv), "-c", PANOPTICA_TIMER, str(npz), str(ROOT / "tests" / "unet3d")],
                             capture_output=True, text=True, check=True)
    peer = json.loads(run.stdout.strip().splitlines()[-1])

    print(f"{'case / region':<14} {'TP/FP/FN ours':>14} {'panoptica':>10} {'LW Dice ours':>13} "
          f"{'panoptica':>10} {'panoptica s':>12}")
    total_peer = 0.0
    agree = True
    for name, o in ours.items():
        q = peer[name]
        total_peer += q["seconds"]
        counts = f"{o['lesion_tp']:.0f}/{o['lesion_fp']:.0f}/{o['lesion_fn']:.0f}"
        pcounts = f"{q['lesion_tp']}/{q['lesion_fp']}/{q['lesion_fn']}"
        lw = q["lesionwise_dice"]
        same = counts == pcounts and (np.isnan(lw) or abs(lw - o["lesionwise_dice"]) < 1e-6)
        agree &= same
        print(f"{name:<14} {counts:>14} {pcounts:>10} {o['lesionwise_dice']:>13.4f} {lw:>10.4f} "
              f"{q['seconds']:>12.2f}")
    ours_total = sum(v["case_seconds"] for k, v in ours.items() if k.endswith("_WT"))
    print(f"\n{args.cases} cases x {len(scheme.regions)} regions at 240x240x155: ours {ours_total:.2f} s "
          f"(Dice, HD95, NSD and lesion-wise, all regions), panoptica {total_peer:.2f} s "
          f"(its evaluate per region); lesion counts and lesion-wise Dice agree: {agree}")


if __name__ == "__main__":
    main()
