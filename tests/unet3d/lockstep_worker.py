"""Trains given initial weights for a few steps of the real pipeline under the Keras backend named
on the command line, prints the losses and the validation Dice as JSON and saves the model as a
folder ``predict`` reads (test_backends runs it once per backend). A plain module, not a test:
``python lockstep_worker.py BACKEND JOB.json``."""

from __future__ import annotations

import json
import os
import sys

if __name__ == "__main__":
    os.environ["KERAS_BACKEND"] = sys.argv[1]
    job = json.loads(open(sys.argv[2]).read())
    sys.path.insert(0, job["root"])

    import numpy as np

    import unet3d  # noqa: F401  (runtime defaults first)
    from unet3d.config import RunConfig
    from unet3d.data.pipeline import train_dataset
    from unet3d.data.preprocess import open_cases
    from unet3d.evaluation.evaluate import evaluate_cases, mean_scores
    from unet3d.training.checkpoint import save_model
    from unet3d.training.model import build_unet3d
    from unet3d.training.train import compile_model

    cfg = RunConfig.from_dict(job["config"])
    net = build_unet3d(cfg.model)
    with np.load(job["weights"]) as z:
        net.set_weights([z[f"arr_{i}"] for i in range(len(z.files))])
    compile_model(net, cfg)
    # Host augmentation: tf.data's stateless draws, the same crops under either backend.
    ds = train_dataset(open_cases(job["cache"], job["train"]), cfg.data, cfg.train.batch_size,
                       cfg.train.seed, augment=True)
    history = net.fit(ds, epochs=cfg.train.epochs, steps_per_epoch=cfg.train.steps_per_epoch,
                      verbose=0)
    scores = mean_scores(evaluate_cases(net, open_cases(job["cache"], job["val"]), cfg))
    out = f"{job['out']}/{sys.argv[1]}"
    save_model(net, f"{out}/model.keras")
    cfg.replace(train={"backend": sys.argv[1]}).save(f"{out}/config.json")
    print(json.dumps({"loss": history.history["loss"], "dice_mean": scores["dice_mean"]}))
