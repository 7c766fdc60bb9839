"""The Ray Tune function trainable: one trial trains one sampled configuration.

Per epoch it reports the trainer's record: the validation Dice of every region of the label scheme
(``val_dice_<R>``) and their tumour mean (``val_dice_mean``), the lesion-wise scores when the
objective is lesion-wise (``val_lesionwise_dice_mean``, ...), the loss, the learning rate, throughput in
volumes/s, the node it runs on, and a checkpoint (the trainer's ``checkpoint.npz`` with the trial's
``config.json``). The engine ranks and stops by the search objective's metric (``ctx.metric``);
the trial's config carries the objective (``train.objective``) and the scheme (``data.labels``)
from the context, so the trainer reports that metric. A trial that Ray restores (after a failure
or a resumed search) continues from its last reported checkpoint.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from search import faults
from search.context import SearchContext
from search.storage import ExperimentFolder

# What population-based training (search.ray_factories) may change in a running trial: settings that
# leave the weights' shapes (and the memory a trial needs) as they are, so a trial continues from
# another trial's checkpoint under them.
MUTABLE = ("train.learning_rate", "train.loss", "train.weight_decay", "data.foreground_ratio",
           "data.augment")

# How long a reused worker process (ray_factories.reuse_actors) waits for its previous trial's
# training thread to end before it takes the next trial (Ray Tune's TUNE_FUNCTION_THREAD_TIMEOUT_S,
# read by the worker each time it is reused; Ray's default is 2 s). Stopped at its last report, that
# thread unwinds Keras's fit and tf.data's iterator, which waits for the batch being prepared:
# several seconds when the cores are busy. Past the wait, Ray fails the next trial ("Trainable
# runner reuse requires reset_config() ... return True"), costing it one of its retries.
REUSE_WAIT_S = 300


def train_trial(config: dict[str, Any], ctx: SearchContext) -> None:
    """Ray Tune function trainable. ``config``: the sampled parameters; ``ctx``: what every trial
    shares (data, split, the parsed space)."""
    from ray import tune

    from search.race import continuation_of, sampled
    from unet3d.runtime import lean_keras, limit_cpu_threads, use_backend  # (before TF/JAX load)

    lean_keras()
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(REUSE_WAIT_S)  # (this worker's next reuse)
    context = ctx
    cont = continuation_of(config)
    config = sampled(config)
    cfg, train_ids, val_ids = _trial_plan(context, config, cont)
    # A trial's backend can be its own (a space may sample train.backend): such trials each get a
    # fresh worker process (ray_factories.reuse_actors), where Keras is not loaded yet; a reused
    # worker already runs the search's backend.
    use_backend(cfg.train.backend)
    tctx = tune.get_context()
    resources = tctx.get_trial_resources().required_resources if tctx.get_trial_resources() else {}
    limit_cpu_threads(resources.get("CPU", os.cpu_count() or 1))

    from unet3d.io_utils import public

    run, resume, new = _trial_folder(context, tctx, cfg, cont)
    run_dir = run.path

    index = tctx.get_trial_name().split("_", 1)[0]
    trial_index = int(index) if index.isdigit() else 0
    node = {"node_ip": _node_ip(), "node_id": _node_id(), "hostname": socket.gethostname(),
            "trial_index": trial_index}

    def report(epoch: int, record: dict[str, float], checkpoint_file: Path | None = None) -> None:
        # (an epoch without validation, e.g. the race's winner continued on every case, still
        # names the objective: Ray requires it in every result)
        metrics = {context.metric: float("nan"), **record, **node, "epoch": epoch}
        with tempfile.TemporaryDirectory() as d:
            public(d)  # (Ray copies the folder with its mode into the trial's checkpoint_N)
            _copy_state(run_dir, Path(d), checkpoint_file)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if context.workers_per_trial > 1:
        if new:
            from search.tb import write_hparams

            write_hparams(run.tensorboard, config, tctx.get_trial_id())

        def relay(epoch: int, record: dict[str, float], checkpoint_file: Path) -> None:
            report(epoch, record, checkpoint_file)
            faults.after_report(trial_index, epoch)

        # (this process only relays the workers' epochs: it never loads Keras or TensorFlow)
        _train_with_horovod(context, cfg, run_dir, resume, relay, resources, train_ids, val_ids)
        return
    from search.trial import fit_trial

    fit_trial(context, cfg, run, trial_id=tctx.get_trial_id(), sample=config, train_ids=train_ids,
              val_ids=val_ids, resume=resume, new=new, epoch_hook=report, trial_index=trial_index)


def _trial_folder(context: SearchContext, tctx: Any, cfg: Any,
                  cont: dict[str, Any] | None) -> tuple[Any, bool, bool]:
    """The trial's run folder (in the experiment, where users look) and (resume, new): Ray's
    checkpoint of a retried, resumed or PBT-exploited trial; the race winner's last checkpoint for
    its continuation (new: it gets its own HParams record); or a fresh start."""
    from ray import tune

    from unet3d.config import RunConfig

    trial_dir = Path(tctx.get_trial_dir())
    # Ray's trial dir is a local staging folder synced to storage later; write where users look.
    base = Path(context.experiment) / trial_dir.name if context.experiment else trial_dir
    run = ExperimentFolder(base.parent).trial_run(base.name)
    run.path.mkdir(parents=True, exist_ok=True)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            _copy_state(Path(d), run.path)
        if _perturbed(RunConfig.load(run.config), cfg):
            # Population-based training: the trial continues from a better trial's checkpoint with
            # that trial's configuration, some training settings perturbed (search.ray_factories'
            # MUTABLE; the weights' shapes are the same). The trainer resumes under the new one;
            # any other difference stays an error (the trainer's "different configuration").
            cfg.save(run.config)
        return run, True, False
    if cont is not None:
        # The winner's last checkpoint: the trainer resumes it under the longer schedule (a wsd
        # run that has not cooled down continues exactly; unet3d.training.schedules.continues).
        _fetch(cont["checkpoint"], run.path)
        return run, True, True
    run.checkpoint.unlink(missing_ok=True)  # a fresh attempt of a failed trial
    return run, False, True


def _trial_plan(context: SearchContext, config: dict[str, Any],
                cont: dict[str, Any] | None) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    """The trial's RunConfig and its training and validation case IDs: the search's, or for the
    race's winner continued to the end of the budget (``cont``, search.race) its longer schedule,
    on every labelled case with ``data`` "all" (as a model trained alone would be; no held-out
    case is left)."""
    cfg = context.run_config(config)
    train_ids, val_ids = context.train_ids, context.val_ids
    if cont is not None:
        cfg = cfg.with_epochs(cont["epochs"]).replace(
            train={"cooldown_epochs": cont["cooldown_epochs"]})
        if cont.get("data", "train") == "all":
            train_ids, val_ids = tuple(sorted(set(train_ids) | set(val_ids))), ()
    return cfg, train_ids, val_ids


def _fetch(checkpoint: str, run_dir: Path) -> None:
    """A trial checkpoint (a folder or a storage URI, as Ray names it) copied into ``run_dir``."""
    from ray import tune

    with tune.Checkpoint(checkpoint).as_directory() as d:
        _copy_state(Path(d), run_dir)


def _copy_state(src: Path, dst: Path, checkpoint_file: Path | None = None) -> None:
    """What resumes a trial, its checkpoint (``checkpoint_file`` if given, else ``src``'s) and its
    config, copied from run or Ray checkpoint folder ``src`` into ``dst`` (the same names in both)."""
    from unet3d.folders import RunFolder

    source, dest = RunFolder(src), RunFolder(dst)
    shutil.copy2(checkpoint_file or source.checkpoint, dest.checkpoint)
    shutil.copy2(source.config, dest.config)


def mutable_fields() -> set[str]:
    """The RunConfig fields :data:`MUTABLE` parameters set (``data.augment`` sets every
    augmentation strength): what may differ when a PBT trial continues from another's checkpoint."""
    from spaces.space import AUGMENT_FIELDS

    return (set(MUTABLE) - {"data.augment"}) | set(AUGMENT_FIELDS)


def _perturbed(saved: Any, cfg: Any) -> bool:
    """Whether ``cfg`` differs from the checkpoint's ``saved`` config only in settings PBT may
    change (:func:`mutable_fields`), and does differ."""
    a, b = saved.to_dict(), cfg.to_dict()
    changed = {f"{section}.{k}" for section in a for k in a[section]
               if a[section][k] != b.get(section, {}).get(k)}
    return bool(changed) and changed <= mutable_fields()


def _train_with_horovod(context: SearchContext, cfg: Any, run_dir: Path, resume: bool,
                        report: Any, resources: dict[str, float], train_ids: tuple[str, ...],
                        val_ids: tuple[str, ...]) -> None:
    """Trains the trial with ``workers_per_trial`` Horovod workers (Ray actors in this trial's
    placement group). Rank 0 hard-links each epoch's checkpoint and sends the epoch's record
    through a Ray queue; this function reports both to Tune. When Tune stops the trial (ASHA), this
    actor dies and Ray ends the worker actors it owns with it."""
    import ray
    from horovod.ray import RayExecutor
    from ray.util.queue import Empty, Queue

    from unet3d.folders import RunFolder
    from unet3d.training.worker import train_in_worker

    queue = Queue(actor_options={"num_cpus": 0})

    def hook(epoch: int, record: dict[str, float]) -> None:
        link = run_dir / f".epoch{epoch}.npz"
        link.unlink(missing_ok=True)
        os.link(run_dir / RunFolder.CHECKPOINT, link)  # this epoch's file, whatever rank 0 writes next
        queue.put((epoch, record))

    gpus = resources.get("GPU", 0.0)
    n = context.workers_per_trial
    # Gloo over loopback when this trial's node is the loopback-only local Ray (a local search);
    # on a cluster, Horovod picks the interface that reaches the other workers' nodes.
    local = _node_ip() == "127.0.0.1"
    if local:
        from unet3d.training.distributed import bind_loopback

        bind_loopback()
    settings = RayExecutor.create_settings(timeout_s=60, nics={"lo"} if local and not gpus else None)
    executor = RayExecutor(settings, num_workers=n, cpus_per_worker=1, use_gpu=gpus > 0,
                           gpus_per_worker=1 if gpus > 0 else None,
                           use_current_placement_group=True)
    executor.start()
    try:
        refs = executor.run_remote(train_in_worker, kwargs=dict(
            config=cfg.to_dict(), cache=context.cache, train_ids=list(train_ids),
            val_ids=list(val_ids), out=str(run_dir), resume=resume, epoch_hook=hook,
            log_epochs=False))
        pending = list(refs)
        while True:
            try:
                epoch, record = queue.get(timeout=1.0)
            except Empty:
                done, pending = ray.wait(pending, timeout=0, num_returns=len(pending))
                ray.get(done)  # raises a worker's exception here
                if not pending and queue.empty():
                    break
                continue
            link = run_dir / f".epoch{epoch}.npz"
            report(epoch, record, checkpoint_file=link)
            link.unlink(missing_ok=True)
    finally:
        executor.shutdown()



def _node_id() -> str:
    """This Ray node's ID (hex); distinguishes nodes that share an address, e.g. on loopback."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001  (outside Ray)
        return ""


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001  (outside Ray)
        return "127.0.0.1"
