"""One training run of the 3D-UNet on cached cases.

What a run does: checks that Keras runs on the configured backend (TensorFlow or JAX), sets the
precision policy (auto | fp32 | mixed_float16 with dynamic loss scaling | mixed_bfloat16; auto
resolved for the device, see unet3d.runtime) and XLA (on | off | auto: on for GPU, off for CPU
where XLA is slower; always under JAX), builds the model (data-parallel over every device JAX sees
when it sees several), trains with Adam (AdamW when weight decay is set) under a linear warm-up +
cosine schedule or warmup-stable-decay (unet3d.training.schedules: a run that can be continued to more
epochs), augmenting on the device inside the training step (unet3d.training.augment) or on the host,
validates whole volumes by sliding window every ``val_every`` epochs, writes TensorBoard scalars per
epoch (losses, region Dice, learning rate, volumes/s) and a checkpoint after every epoch, and ends
with ``<out>/model.keras``, ``config.json`` and ``metrics.json``.

Checkpoints are one ``.npz`` file (model weights, optimizer variables and the run state; see
unet3d.training.checkpoint) replaced atomically each epoch, so a killed run resumes from the last finished
epoch with ``resume=True``; a ``wsd`` run resumed under a longer schedule continues to it.
Nothing here prints: progress goes to the optional ``log`` callable.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from unet3d.config import RunConfig
from unet3d.data.pipeline import train_dataset
from unet3d.data.preprocess import CachedCase, open_cases
from unet3d.errors import UserError
from unet3d.evaluation.evaluate import evaluate_cases, mean_scores
from unet3d.evaluation.metrics import objective_score, summarize
from unet3d.folders import RunFolder
from unet3d.inference.predictor import keras_predict_fn
from unet3d.io_utils import atomic_write_json
from unet3d.runtime import (
    backend,
    configure_devices,
    dtype_policy,
    gpu_available,
    peak_memory_gib,
    reset_peak_memory,
    resolve_xla,
    training_precision,
)

# (unet3d/__init__.py, which always runs before this module, has set TensorFlow's CPU defaults.)
from unet3d.training.augment import augmented_model
from unet3d.training.checkpoint import load_checkpoint, read_state, save_checkpoint, save_model
from unet3d.training.distributed import JAX_NO_WORKERS, Workers
from unet3d.training.losses import deep_supervision_weights, get_loss
from unet3d.training.model import build_unet3d, inference_model
from unet3d.training.schedules import continues, make_schedule

Log = Callable[[str], None]


class TrainError(UserError, RuntimeError):
    """A run cannot start or continue (e.g. an existing checkpoint without resume)."""


def make_optimizer(cfg: RunConfig) -> keras.optimizers.Optimizer:
    """Adam (AdamW with weight decay) under ``cfg.train``'s schedule (:mod:`unet3d.training.schedules`)."""
    schedule = make_schedule(cfg)
    if cfg.train.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.train.weight_decay)
    return keras.optimizers.Adam(learning_rate=schedule)


def compile_model(model: keras.Model, cfg: RunConfig) -> None:
    loss = get_loss(cfg.train.loss, cfg.scheme)
    n = len(model.outputs)
    model.compile(
        optimizer=make_optimizer(cfg),
        loss=[loss] * n if n > 1 else loss,
        loss_weights=deep_supervision_weights(n) if n > 1 else None,
        jit_compile=resolve_xla(cfg.train.xla),
    )
    # Its variables now, not inside the first traced step: a tf.function that creates variables
    # is traced a second time (every fit paid two traces of the training step, ~2 s on a CPU).
    model.optimizer.build(model.trainable_variables)


def window_latency(model: keras.Model, cfg: RunConfig, repeats: int = 10,
                   warmup: int = 2) -> tuple[float, float]:
    """(median seconds, relative spread) of one inference forward pass of a window (batch 1, the
    crop's size, always the same input) on the device the model runs on, over ``repeats`` passes
    after ``warmup`` (the first compiles it). The spread is the interquartile range over the
    median: how far one trial's figure can be trusted (a machine shared with other trials moves
    single timings by 2x; the median of ten after warm-up moves far less)."""
    predict = keras_predict_fn(inference_model(model))
    x = np.zeros((1, *cfg.data.crop, cfg.model.in_channels), np.float32)
    for _ in range(warmup):
        np.asarray(predict(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(predict(x))  # (a host copy: the pass has finished)
        times.append(time.perf_counter() - t0)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return float(median), float((q3 - q1) / median) if median > 0 else 0.0


class _EpochEnd(keras.callbacks.Callback):
    """Validation, throughput, learning rate, TensorBoard, checkpoint and history, once per epoch."""

    def __init__(self, run: Trainer) -> None:
        super().__init__()
        self.run = run
        self.t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.run.end_epoch(epoch, logs if logs is not None else {}, time.perf_counter() - self.t0)


class Trainer:
    """One run: ``Trainer(cfg, train_cases, val_cases, out).fit()``.

    Args:
        cfg: the run configuration.
        train_cases: cached, labelled training cases.
        val_cases: cached, labelled validation cases (may be empty: no validation then).
        out: output folder.
        resume: continue from ``out/checkpoint.npz``; without it an existing checkpoint is an error
            (so nothing is silently overwritten).
        log: receives one line of progress per epoch.
        epoch_hook: called after each epoch with (epoch, metrics); a search reports from here.
        workers: this process's place among Horovod workers (see unet3d.training.distributed); with more
            than one, each rank trains on its own shard of the crop stream, gradients are averaged
            every step, validation is split across ranks, and only rank 0 writes files.
        scale_lr: multiply the learning rate by the number of workers (the usual rule when the
            global batch grows with the workers).
    """

    def __init__(self, cfg: RunConfig, train_cases: Sequence[CachedCase],
                 val_cases: Sequence[CachedCase], out: str | Path, *, resume: bool = False,
                 log: Log | None = None,
                 epoch_hook: Callable[[int, dict[str, float]], None] | None = None,
                 workers: Workers | None = None, scale_lr: bool = False) -> None:
        self.workers = workers or Workers()
        if scale_lr and self.workers.size > 1:
            cfg = cfg.replace(train={"learning_rate": cfg.train.learning_rate * self.workers.size})
        self.cfg = cfg
        self.train_cases = list(train_cases)
        self.val_cases = list(val_cases)
        if cfg.data.max_val_cases:
            self.val_cases = self.val_cases[: cfg.data.max_val_cases]
        self._val_bounded = not cfg.data.val_seconds  # (data.val_seconds bounds the first one)
        self._latency: tuple[float, float] | None = None
        # The last epoch's validation, scored with HD95 too: the final scores (_finish) of the
        # same weights, so a run predicts its validation cases once at the end, not twice.
        self._last_validation: list[dict[str, Any]] | None = None
        self.out = Path(out)
        self.folder = RunFolder(self.out)
        self.resume = resume
        self.log = log or (lambda _msg: None)
        self.epoch_hook = epoch_hook
        self.shard = (self.workers.rank, self.workers.size)
        self.is_chief = self.workers.is_chief
        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.model: keras.Model | None = None  # the network (saved, validated)
        self.train_model: keras.Model | None = None  # what fit trains (the network, or wrapped)
        self.precision = cfg.train.precision  # resolved for the device by fit()
        self.devices = 1
        self._writer = None

    @property
    def checkpoint_path(self) -> Path:
        return self.folder.checkpoint

    def _check_out(self) -> None:
        ckpt = self.checkpoint_path
        self.folder.check_start(self.resume)
        if self.resume and ckpt.exists():
            saved = self.folder.config
            if saved.exists() and RunConfig.load(saved) != self.cfg:
                before = RunConfig.load(saved)
                steps = int(read_state(ckpt)["epoch"]) * before.train.steps_per_epoch
                if not continues(before, self.cfg, steps):
                    raise TrainError(
                        f"{saved}: the run being resumed used a different configuration (only a "
                        f"train.schedule 'wsd' run that has not started its cool-down can be "
                        f"continued with other train.epochs / train.cooldown_epochs)")
                # A longer (or cooled-down) schedule: every step taken so far had the rate the
                # new one gives it, so the run goes on as if it had been this long from the start.
                self.log(f"continuing {self.out} (epoch {steps // before.train.steps_per_epoch}) "
                         f"to {self.cfg.train.epochs} epochs, cool-down "
                         f"{self.cfg.train.cooldown_epochs}")

    def fit(self) -> dict[str, Any]:
        """Trains, writes the outputs, returns the metrics dict (also in metrics.json)."""
        cfg = self.cfg
        self._check_out()
        self._check_backend()
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_chief:
            cfg.save(self.folder.config)
        configure_devices()
        self._gpu = gpu_available()
        reset_peak_memory(self._gpu)  # (this run's peak, also after another in this process)
        self.precision = training_precision(cfg.train.precision)
        previous = keras.config.dtype_policy()
        previous_distribution = keras.distribution.distribution()
        keras.config.set_dtype_policy(dtype_policy(self.precision))
        try:
            keras.utils.set_random_seed(cfg.train.seed)
            self._distribute()
            self.model = build_unet3d(cfg.model)
            self.train_model = self._training_model()
            compile_model(self.train_model, cfg)
            if self.resume and self.checkpoint_path.exists():
                state = load_checkpoint(self.checkpoint_path, self.train_model)
                self.start_epoch = int(state["epoch"])
                self.history = list(state["history"])
                self._resume_val_cases()
                self.log(f"resumed from {self.checkpoint_path} after epoch {self.start_epoch}")
            if self.is_chief:
                self._writer = tf.summary.create_file_writer(str(self.folder.tensorboard))
            if self.start_epoch < cfg.train.epochs:
                on_host = cfg.data.augment_on == "host"
                ds = train_dataset(self.train_cases, cfg.data, cfg.train.batch_size,
                                   cfg.train.seed, n_outputs=len(self.model.outputs),
                                   augment=on_host,
                                   start_index=self.start_epoch * cfg.train.steps_per_epoch
                                   * cfg.train.batch_size, shard=self.shard)
                if self.workers.distributed:
                    self._fit_horovod(ds)
                else:
                    self.train_model.fit(ds, epochs=cfg.train.epochs,
                                         initial_epoch=self.start_epoch,
                                         steps_per_epoch=cfg.train.steps_per_epoch, verbose=0,
                                         shuffle=False, callbacks=[_EpochEnd(self)])
            return self._finish()
        finally:
            keras.config.set_dtype_policy(previous)
            keras.distribution.set_distribution(previous_distribution)
            if self._writer is not None:
                self._writer.close()

    def _check_backend(self) -> None:
        configured, running = self.cfg.train.backend, backend()
        if configured != running:
            raise TrainError(f"train.backend={configured!r} but Keras runs on {running!r} in this "
                             f"process (the CLI's --backend picks it before Keras loads; in Python "
                             f"set KERAS_BACKEND={configured} before importing Keras)")
        if running == "jax" and self.workers.distributed:
            raise TrainError(f"train.backend='jax' cannot train with Horovod workers: "
                             f"{JAX_NO_WORKERS}; under JAX one process trains on all of a "
                             f"machine's GPUs")

    def _distribute(self) -> None:
        """Under JAX with several devices, data parallelism over all of them (keras.distribution:
        the batch is split across the devices, the weights are replicated)."""
        self.devices = 1
        if backend() != "jax":
            return
        import jax

        devices = jax.devices()
        if len(devices) < 2:
            return
        batch = self.cfg.train.batch_size
        if batch % len(devices):
            raise TrainError(f"train.batch_size={batch} must be a multiple of the {len(devices)} "
                             f"devices JAX trains on data-parallel")
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        self.devices = len(devices)

    def _training_model(self) -> keras.Model:
        """The model ``fit`` trains: the network itself, or with ``data.augment_on: device`` the
        network inside the on-device augmentation (unet3d.training.augment; same weights). Its draws are
        seeded by the run's seed and the rank; the checkpoint keeps their state, so a resumed run
        continues the same stream."""
        data = self.cfg.data
        if data.augment_on != "device":
            return self.model
        entropy = [self.cfg.train.seed, self.workers.rank]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0] & 0x7FFFFFFF)
        return augmented_model(self.model, data, seed)

    def end_epoch(self, epoch: int, logs: dict[str, Any], seconds: float) -> None:
        cfg = self.cfg
        t = cfg.train
        record: dict[str, float] = {"epoch": epoch + 1, "loss": float(logs.get("loss", np.nan))}
        record["learning_rate"] = float(np.asarray(self.train_model.optimizer.learning_rate))
        if not np.isfinite(record["loss"]):
            # Diverged: stop before validating or checkpointing, so the last checkpoint stays the
            # last good epoch (a resumed or retried run starts from there).
            raise TrainError(f"loss is {record['loss']} in epoch {epoch + 1}: training diverged "
                             f"(learning rate {record['learning_rate']:.3g}); the last good "
                             f"checkpoint is epoch {epoch}")
        record["throughput_vps"] = (t.steps_per_epoch * t.batch_size * self.workers.size
                                    / max(seconds, 1e-9))
        record["epoch_seconds"] = seconds
        record["workers"] = self.workers.size
        last = epoch + 1 == t.epochs
        if self.val_cases and ((epoch + 1) % t.val_every == 0 or last):
            record.update(self._validate(last))
        # Measured peak so far (GPU: the device's; CPU: resident memory), next to what
        # unet3d.planning.memory predicts; `plan --probe` and the search's results read it.
        peak = peak_memory_gib(self._gpu)
        if peak is not None:
            record["memory_peak_gib"] = peak
        self.history.append(record)
        if self._writer is not None:
            with self._writer.as_default(step=epoch + 1):
                for k, v in record.items():
                    if k != "epoch" and not isinstance(v, list):
                        tf.summary.scalar(k, v)
            self._writer.flush()
        if self.is_chief:
            save_checkpoint(self.checkpoint_path, self.train_model,
                            {"epoch": epoch + 1, "history": self.history})
        if not self.is_chief:
            return
        msg = (f"epoch {epoch + 1}/{t.epochs} loss {record['loss']:.4f} "
               f"lr {record['learning_rate']:.2e} {record['throughput_vps']:.1f} vol/s")
        if "val_dice_mean" in record:
            regions = " ".join(f"{r} {record[f'val_dice_{r}']:.3f}" for r in cfg.scheme.regions)
            msg += f" | val Dice {regions} mean {record['val_dice_mean']:.3f}"
            if "val_lesionwise_dice_mean" in record:
                msg += f" | lesion-wise mean {record['val_lesionwise_dice_mean']:.3f}"
        self.log(msg)
        if self.epoch_hook is not None and self.is_chief:
            self.epoch_hook(epoch + 1, record)

    def _validate(self, last: bool) -> dict[str, Any]:
        """An epoch's validation record. The last epoch's is scored with HD95 too and kept as the
        run's final scores (_finish: the same weights, so not predicted again)."""
        t = self.cfg.train
        v0 = time.perf_counter()
        per_case = self._evaluate(hd95=last)
        if last:
            self._last_validation = per_case
            per_case = [{k: v for k, v in c.items() if not k.startswith("hd95_")}
                        for c in per_case]  # (every epoch's record holds the same scores)
        record: dict[str, Any] = {f"val_{k}": v for k, v in mean_scores(per_case).items()}
        # Each case's objective score, in the validation cases' order: what a search compares
        # trials on case by case (search.race); not a scalar, so not in TensorBoard.
        record["val_per_case"] = [objective_score(c, t.objective) for c in per_case]
        record["val_seconds"] = time.perf_counter() - v0
        record["val_cases"] = len(self.val_cases)
        record["params"] = float(self.model.count_params())
        if t.latency:
            if self._latency is None:
                self._latency = window_latency(self.model, self.cfg)
            record["latency_s"], record["latency_spread"] = self._latency
        return record

    def _resume_val_cases(self) -> None:
        """A resumed run scores the cases its first validation kept (``data.val_seconds``), as
        recorded in its history, not a new count."""
        counts = [int(r["val_cases"]) for r in self.history if "val_cases" in r]
        if counts and not self.workers.distributed:
            self.val_cases = self.val_cases[: counts[-1]]
            self._val_bounded = True

    def _evaluate(self, *, hd95: bool) -> list[dict[str, Any]]:
        """Per-case validation scores; with several workers each rank scores its share and every
        rank gets the whole list (so every rank reports the same, case-weighted mean)."""
        if not self.workers.distributed:
            budget = self.cfg.data.val_seconds if not self._val_bounded else 0.0
            out = evaluate_cases(self.model, self.val_cases, self.cfg, hd95=hd95, max_seconds=budget)
            if not self._val_bounded:
                # The first validation fixes the cases every later epoch scores (so epochs, and
                # trials with similar speed, compare on the same cases).
                self._val_bounded = True
                if len(out) < len(self.val_cases):
                    self.log(f"validation limited to the first {len(out)} of {len(self.val_cases)} "
                             f"cases by data.val_seconds={self.cfg.data.val_seconds:g}")
                    self.val_cases = self.val_cases[: len(out)]
            return out
        import horovod.tensorflow as hvd

        from unet3d.training.distributed import shard

        mine = evaluate_cases(self.model, shard(self.val_cases, self.workers), self.cfg, hd95=hd95)
        gathered = hvd.allgather_object(mine, name=f"unet3d_val_{len(self.history)}_{int(hd95)}")
        order = {c.case_id: i for i, c in enumerate(self.val_cases)}
        return sorted((c for part in gathered for c in part), key=lambda c: order[c["case_id"]])

    def _fit_horovod(self, ds: tf.data.Dataset) -> None:
        """The multi-worker loop: compiled forward/backward, allreduce and update outside XLA."""
        import horovod.tensorflow as hvd

        from unet3d.training.distributed import average, broadcast_variables

        cfg, model, net = self.cfg, self.train_model, self.model
        opt = model.optimizer  # (built by compile_model)
        broadcast_variables(model.variables + list(opt.variables))
        loss_fn = get_loss(cfg.train.loss, cfg.scheme)
        n_out = len(model.outputs)
        weights = deep_supervision_weights(n_out)
        variables = model.trainable_variables

        @tf.function(jit_compile=resolve_xla(cfg.train.xla))
        def forward_backward(x, y):
            with tf.GradientTape() as tape:
                out = model(x, training=True)
                if n_out > 1:
                    loss = tf.add_n([w * loss_fn(t, o) for w, t, o in zip(weights, y, out,
                                                                          strict=True)])
                else:
                    loss = loss_fn(y, out)
                scaled = opt.scale_loss(loss)  # identity unless a LossScaleOptimizer
            return loss, tape.gradient(scaled, variables)

        @tf.function
        def step(x, y):
            loss, grads = forward_backward(x, y)
            grads = hvd.grouped_allreduce(grads, op=hvd.Average)
            opt.apply(grads, variables)
            return loss

        it = iter(ds)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            t0 = time.perf_counter()
            losses = [float(step(*next(it))) for _ in range(cfg.train.steps_per_epoch)]
            # Batch-norm statistics are updated per rank: average them so every rank (and the
            # exported model) holds the same non-trainable state.
            # (The network's own: the augmentation's seed state differs per rank on purpose.)
            if net.non_trainable_variables:
                for v, avg in zip(net.non_trainable_variables,
                                  average([v.value for v in net.non_trainable_variables]),
                                  strict=True):
                    v.assign(avg)
            loss = float(average([tf.constant(np.mean(losses), tf.float64)])[0])
            self.end_epoch(epoch, {"loss": loss}, time.perf_counter() - t0)

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        metrics: dict[str, Any] = {
            "epochs": cfg.train.epochs,
            "backend": backend(),
            "precision": self.precision,
            "devices": self.devices * self.workers.size,
            "parameters": int(self.model.count_params()),
            "train_cases": [c.case_id for c in self.train_cases],
            "val_cases": [c.case_id for c in self.val_cases],
            "history": self.history,
        }
        if self.val_cases:
            per_case = self._last_validation or self._evaluate(hd95=True)
            metrics["per_case"] = per_case
            metrics["final"] = mean_scores(per_case)
            metrics["summary"] = summarize([{k: v for k, v in c.items() if k != "case_id"}
                                            for c in per_case])
        vps = [h["throughput_vps"] for h in self.history[1:] or self.history]
        metrics["throughput_vps"] = float(np.median(vps)) if vps else None
        metrics["memory_peak_gib"] = peak_memory_gib(self._gpu)
        if self.is_chief:
            save_model(inference_model(self.model), self.folder.model)
            atomic_write_json(self.folder.metrics, metrics)
        return metrics


def train_worker(config: dict[str, Any], cache: str, train_ids: Sequence[str],
                 val_ids: Sequence[str], out: str, resume: bool = False,
                 scale_lr: bool = False,
                 epoch_hook: Callable[[int, dict[str, float]], None] | None = None,
                 log_epochs: bool = True) -> dict[str, Any] | None:
    """One Horovod worker of a multi-worker run (started by ``unet3d.training.distributed.launch``, or by a
    search trial through Horovod's Ray executor).

    Reads the already-prepared cache, trains its shard, and returns the metrics on rank 0, where
    ``epoch_hook`` is also called after every epoch (its checkpoint is written by then).
    """
    from unet3d.training import distributed

    workers = distributed.init()
    cfg = RunConfig.from_dict(config)
    log = (lambda m: print(m, flush=True)) if workers.is_chief and log_epochs else None
    trainer = Trainer(cfg, open_cases(cache, train_ids), open_cases(cache, val_ids), out,
                      resume=resume, log=log,
                      workers=workers, scale_lr=scale_lr, epoch_hook=epoch_hook)
    metrics = trainer.fit()
    return metrics if workers.is_chief else None
