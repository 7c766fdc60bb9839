#!/usr/bin/env python
"""One command line for the whole project.

  python run_search.py                 the default job (synthetic data, then train; see --help)
  python run_search.py synth           write a synthetic BraTS 2021-layout dataset
  python run_search.py prepare         validate and preprocess a dataset into its cache
  python run_search.py train           train one 3D-UNet

Errors in the user's input (data, config) print one line naming the file or field and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path("data/synthetic")
DEFAULT_OUT = Path("results")
EXIT_USER_ERROR = 2


def _print(msg: str) -> None:
    print(msg, flush=True)


def _tty_progress(what: str, total: int):
    """A progress callback that redraws one line on a terminal and stays quiet in logs."""
    if not sys.stdout.isatty():
        return None
    return lambda i: print(f"\r{what} {i + 1}/{total}", end="", flush=True)


def _cache_dir(args: argparse.Namespace) -> Path:
    return Path(args.cache) if args.cache else Path(args.data) / ".unet3d-cache"


def _load_config(args: argparse.Namespace):
    from unet3d.config import RunConfig, preset

    cfg = RunConfig.load(args.config) if args.config else preset(args.preset)
    overrides: dict[str, dict] = {"train": {}, "data": {}}
    if args.epochs is not None:
        overrides["train"]["epochs"] = args.epochs
        overrides["train"]["warmup_epochs"] = min(cfg.train.warmup_epochs, args.epochs)
    if args.steps_per_epoch is not None:
        overrides["train"]["steps_per_epoch"] = args.steps_per_epoch
    if args.seed is not None:
        overrides["train"]["seed"] = args.seed
    if args.fold is not None:
        overrides["data"]["fold"] = args.fold
    if args.folds is not None:
        overrides["data"]["folds"] = args.folds
        if args.fold is None:
            overrides["data"]["fold"] = min(cfg.data.fold, args.folds - 1)
    if args.precision is not None:
        overrides["train"]["precision"] = args.precision
    if args.xla is not None:
        overrides["train"]["xla"] = args.xla
    return cfg.replace(**{k: v for k, v in overrides.items() if v})


def _prepare(data: Path, cache: Path, verbose: bool = True):
    from unet3d.data.discover import discover
    from unet3d.data.preprocess import prepare

    ds = discover(data)
    counts = {"new": 0, "reused": 0}
    n = len(ds.cases)

    def progress(case, reused: bool) -> None:
        counts["reused" if reused else "new"] += 1
        done = counts["new"] + counts["reused"]
        if verbose and sys.stdout.isatty():
            print(f"\rpreprocess {done}/{n} {case.case_id:<24}", end="", flush=True)

    entries = prepare(ds.cases, cache, progress)
    if verbose:
        if sys.stdout.isatty():
            print()
        _print(f"{ds.layout} layout: {n} cases ({len(ds.labelled)} labelled) -> {cache} "
               f"({counts['new']} preprocessed, {counts['reused']} reused)")
    return ds, entries


def cmd_synth(args: argparse.Namespace) -> int:
    from unet3d.data.synthetic import write_synthetic_dataset

    t0 = time.perf_counter()
    write_synthetic_dataset(args.out, args.cases, tuple(args.shape), seed=args.seed,
                            progress=_tty_progress("synth", args.cases))
    if sys.stdout.isatty():
        print()
    _print(f"wrote {args.cases} synthetic cases ({'x'.join(map(str, args.shape))}) to {args.out} "
           f"in {time.perf_counter() - t0:.1f} s")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    _prepare(Path(args.data), _cache_dir(args))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from unet3d.data.split import kfold

    cfg = _load_config(args)
    out = Path(args.out)
    _, entries = _prepare(Path(args.data), _cache_dir(args))
    labelled = [e for e in entries if e.meta["labelled"]]
    if len(labelled) < cfg.data.folds:
        raise_user(f"{args.data}: {len(labelled)} labelled cases, fewer than data.folds="
                   f"{cfg.data.folds}")
    train_ids, val_ids = kfold([e.case_id for e in labelled], cfg.data.folds, cfg.data.fold,
                               cfg.data.split_seed)
    by_id = {e.case_id: e for e in labelled}
    from unet3d.train import Trainer

    _print(f"training fold {cfg.data.fold}/{cfg.data.folds}: {len(train_ids)} train, "
           f"{len(val_ids)} validation cases; crop {list(cfg.data.crop)}, batch "
           f"{cfg.train.batch_size}, {cfg.train.epochs} epochs x {cfg.train.steps_per_epoch} steps")
    trainer = Trainer(cfg, [by_id[i] for i in train_ids], [by_id[i] for i in val_ids], out,
                      resume=args.resume, log=_print)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    _print(f"trained in {time.perf_counter() - t0:.0f} s; {metrics['parameters']:,} parameters")
    if "final" in metrics:
        f = metrics["final"]
        _print(f"validation ({len(val_ids)} cases): Dice WT {f['dice_WT']:.3f} TC {f['dice_TC']:.3f} "
               f"ET {f['dice_ET']:.3f} mean {f['dice_mean']:.3f} | HD95 mean {f['hd95_mean']:.2f} mm")
    _print(f"model: {out / 'model.keras'}\nconfig: {out / 'config.json'}\nmetrics: "
           f"{out / 'metrics.json'}\ntensorboard --logdir {out / 'tensorboard'} --host 127.0.0.1")
    return 0


def cmd_default(args: argparse.Namespace) -> int:
    """The default job until the search lands: synthetic data if absent, then train cpu-small."""
    data = DEFAULT_DATA
    if not data.exists() or not any(data.iterdir()):
        ns = argparse.Namespace(out=str(data), cases=16, shape=[64, 64, 64], seed=0)
        cmd_synth(ns)
    out = DEFAULT_OUT / time.strftime("train-%Y%m%d-%H%M%S")
    ns = argparse.Namespace(data=str(data), cache=None, config=None, preset="cpu-small", epochs=None,
                            steps_per_epoch=None, seed=None, fold=None, folds=None, precision=None,
                            xla=None, out=str(out), resume=False)
    return cmd_train(ns)


class UserError(Exception):
    pass


def raise_user(msg: str) -> None:
    raise UserError(msg)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_search.py",
        description="Automated search for the best 3D-UNet for brain-tumour MRI segmentation. "
                    "With no command: write a synthetic BraTS-like dataset to data/synthetic (if "
                    "absent) and train the cpu-small preset on it into results/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("synth", help="write a synthetic BraTS 2021-layout NIfTI dataset",
                       description="Write N synthetic BraTS-like cases (t1, t1ce, t2, flair, seg as "
                                   ".nii.gz, labels 0/1/2/4) in the BraTS 2021 folder layout. "
                                   "Existing complete cases are kept.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--cases", type=int, default=16, help="number of cases")
    s.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"),
                   help="volume size in voxels (1 mm isotropic)")
    s.add_argument("--seed", type=int, default=0, help="seed of the generator")
    s.set_defaults(func=cmd_synth)

    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--data", required=True,
                       help="dataset folder: BraTS 2019/2020 (HGG/, LGG/), BraTS 2021 (case "
                            "folders) or MSD Task01_BrainTumour (dataset.json, imagesTr/)")
        q.add_argument("--cache", default=None,
                       help="preprocessed cache folder (default: DATA/.unet3d-cache)")

    s = sub.add_parser("prepare", help="validate and preprocess a dataset into its cache",
                       description="Discover the cases, check every file (readable, modalities "
                                   "present, shapes/affines agree, finite voxels, label values), "
                                   "reorient to RAS, crop to the brain, z-score per modality, and "
                                   "cache the result. Re-runs reuse valid cache entries.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data_args(s)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="train one 3D-UNet",
                       description="Train one 3D-UNet on a fold of a dataset. Writes OUT/model.keras, "
                                   "config.json, metrics.json, checkpoint.npz and tensorboard/.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data_args(s)
    from unet3d.config import PRESETS

    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS),
                   help="named configuration")
    g.add_argument("--config", default=None, help="a RunConfig JSON/YAML file (model/train/data)")
    s.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    s.add_argument("--steps-per-epoch", type=int, default=None, help="override train.steps_per_epoch")
    s.add_argument("--fold", type=int, default=None, help="override data.fold (validation fold)")
    s.add_argument("--folds", type=int, default=None, help="override data.folds")
    s.add_argument("--seed", type=int, default=None, help="override train.seed")
    s.add_argument("--precision", choices=["fp32", "mixed_float16", "mixed_bfloat16"], default=None,
                   help="override train.precision")
    s.add_argument("--xla", choices=["on", "off", "auto"], default=None, help="override train.xla")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last checkpoint")
    s.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from unet3d.config import ConfigError
    from unet3d.data.discover import DataError

    try:
        if args.command is None:
            return cmd_default(args)
        return args.func(args)
    except (ConfigError, DataError, UserError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001
        from unet3d.train import TrainError

        if isinstance(e, TrainError):
            print(f"\nerror: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
