"""Inference: sliding windows over a whole volume, ensembles, and predictions on the input's grid.

Windows of the model's patch size are streamed in batches (never all materialised at once); each
window's probabilities are weighted by a Gaussian centred on the window (sigma = patch/8, as nnU-Net),
so voxels near window borders, where the network sees little context, count less. Optional mirror
test-time augmentation averages over flips of the input.

A :class:`Predictor` takes a case as read from disk, preprocesses it exactly as training did
(canonical orientation, brain crop, z-score), averages the probabilities of one or more models,
post-processes the class map (by default as the first member's export chose on its validation
cases, ``postprocess.json``; see :func:`resolve_postprocess`), and puts it back on the case's
original grid with the label scheme's values (BraTS 2019-21 0/1/2/4, 2023+ 0-3, 2024 GLI 0-4,
...); :func:`write_prediction` saves it with the input's affine and header.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import nibabel as nib
import numpy as np

from unet3d.errors import OptionError
from unet3d.folders import ExportFolder
from unet3d.inference.postprocess import PostProcess, read_saved
from unet3d.io_utils import atomic_path
from unet3d.labels import LabelScheme
from unet3d.runtime import gpu_available, resolve_policy, resolve_xla

if TYPE_CHECKING:
    import keras

    from unet3d.config import RunConfig
    from unet3d.data.preprocess import LoadedCase

PredictFn = Callable[[np.ndarray], np.ndarray]
ProgressFn = Callable[[int], None]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """(D, H, W) float32 importance map, max 1, strictly positive."""
    axes = []
    for p in patch:
        x = np.arange(p, dtype=np.float64) - (p - 1) / 2
        axes.append(np.exp(-0.5 * (x / (p * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w /= w.max()
    return np.maximum(w, 1e-3).astype(np.float32)


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Window start offsets covering [0, size) with at least ``overlap`` fractional overlap."""
    if size <= patch:
        return [0]
    stride = max(1, int(patch * (1 - overlap)))
    n = int(np.ceil((size - patch) / stride)) + 1
    return sorted({int(round(x)) for x in np.linspace(0, size - patch, n)})


def _windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> Iterator[tuple[slice, ...]]:
    starts = [window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))


def check_window_options(overlap: float = 0.5, tta: int = 1, batch_size: int = 1) -> None:
    """The sliding window's options, checked once for every caller (the CLI's flags, the library's
    arguments: the same one-line OptionError, a ValueError).

    Raises:
        OptionError: overlap outside [0, 1), tta outside 1..8, batch_size below 1.
    """
    if not 0 <= overlap < 1:
        raise OptionError(f"--overlap {overlap}: must be in [0, 1)")
    if not 1 <= tta <= 8:
        raise OptionError(f"--tta {tta}: must be 1..8 flips")
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")


def flips(tta: int) -> list[tuple[int, ...]]:
    """The first ``tta`` of the 8 mirror combinations (1 = no TTA), axes given as (1, 2, 3) batch axes."""
    combos = [c for r in range(4) for c in itertools.combinations((1, 2, 3), r)]
    check_window_options(tta=tta)
    return combos[:tta]


def count_windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """How many windows :func:`sliding_window_predict` runs over a (D, H, W) volume (per flip)."""
    n = 1
    for s, p in zip(shape, patch, strict=True):
        n *= len(window_starts(max(int(s), int(p)), int(p), overlap))
    return n


def sliding_window_predict(predict: PredictFn, image: np.ndarray, patch: Sequence[int],
                           n_out: int, *, overlap: float = 0.5, batch_size: int = 2,
                           tta: int = 1, progress: ProgressFn | None = None) -> np.ndarray:
    """Probabilities for a whole volume.

    Args:
        predict: maps a (B, pd, ph, pw, C) float32 batch to (B, pd, ph, pw, n_out) probabilities.
        image: (D, H, W, C) float32 volume (any size; padded with zeros to at least ``patch``).
        patch: window size (pd, ph, pw), a size the model accepts.
        n_out: output channels.
        overlap: fractional overlap of neighbouring windows in [0, 1).
        batch_size: windows per ``predict`` call.
        tta: number of mirror flips to average (1 = none, up to 8).
        progress: called with the number of windows just finished after each batch.

    Returns:
        (D, H, W, n_out) float32 blended probabilities.
    """
    patch = tuple(int(p) for p in patch)
    check_window_options(overlap, tta, batch_size)
    shape = image.shape[:3]
    image, pad = _pad_to(image, patch)
    padded_shape = image.shape[:3]
    weights = gaussian_weights(patch)
    acc = np.zeros((*padded_shape, n_out), np.float32)
    norm = np.zeros(padded_shape, np.float32)
    flip_axes = flips(tta)

    def run(batch_slices: list[tuple[slice, ...]]) -> None:
        x = np.stack([image[s] for s in batch_slices]).astype(np.float32, copy=False)
        prob = np.zeros((*x.shape[:4], n_out), np.float32)
        for axes in flip_axes:
            xf = np.flip(x, axes) if axes else x
            p = np.asarray(predict(np.ascontiguousarray(xf)), dtype=np.float32)
            prob += np.flip(p, axes) if axes else p
        prob /= len(flip_axes)
        for s, p in zip(batch_slices, prob, strict=True):
            acc[s] += p * weights[..., None]
            norm[s] += weights
        if progress is not None:
            progress(len(batch_slices))

    batch: list[tuple[slice, ...]] = []
    for s in _windows(padded_shape, patch, overlap):
        batch.append(s)
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    acc /= norm[..., None]
    out = acc
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pad, shape, strict=True))
    return out[crop]


def _pad_to(image: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``image`` zero-padded (centred) to at least ``patch`` along each spatial axis, and the
    (before, after) padding of each axis."""
    shape = image.shape[:3]
    padded_shape = tuple(max(s, p) for s, p in zip(shape, patch, strict=True))
    if padded_shape == shape:
        return image, [(0, 0)] * 3
    pad = [((ps - s) // 2, ps - s - (ps - s) // 2) for s, ps in zip(shape, padded_shape, strict=True)]
    return np.pad(image, pad + [(0, 0)]), pad


def keras_predict_fn(model) -> PredictFn:
    """A PredictFn for a Keras model (main output only when the model has deep supervision)."""

    def predict(x: np.ndarray) -> np.ndarray:
        y = model.predict_on_batch(x)
        if isinstance(y, (list, tuple)):
            y = y[0]
        return np.asarray(y)

    return predict


def probabilities_to_classes(probs: np.ndarray, head: str,
                             scheme: LabelScheme) -> np.ndarray:
    """(…, K) probabilities -> (…) uint8 training classes: the softmax argmax, or for a region head
    (…, R) each region > 0.5, decoded by ``scheme`` (the smallest region holding a voxel wins)."""
    if head == "regions":
        return scheme.regions_to_classes(probs > 0.5)
    return np.argmax(probs, axis=-1).astype(np.uint8)


class Member(Protocol):
    """One model of an ensemble: whole-volume probabilities on the preprocessed (canonical, cropped)
    grid. ``head`` is "softmax" (K class channels) or "regions" (one sigmoid channel per region of
    ``scheme``); ``in_channels`` the modalities it reads."""

    head: str
    name: str
    scheme: LabelScheme
    in_channels: int

    def windows(self, shape: Sequence[int], overlap: float, tta: int) -> int: ...

    def probabilities(self, image: np.ndarray, *, overlap: float, tta: int, batch_size: int,
                      progress: ProgressFn | None = None) -> np.ndarray: ...


class _WindowedMember:
    """What a member built from an export (``config.json``) shares whatever runs its network: the
    head, labels, inputs and windows of its config, and sliding windows over a ``predict_fn``."""

    cfg: RunConfig

    @property
    def head(self) -> str:
        return self.cfg.model.head

    @property
    def scheme(self) -> LabelScheme:
        return self.cfg.scheme

    @property
    def in_channels(self) -> int:
        return self.cfg.model.in_channels

    @property
    def patch(self) -> tuple[int, int, int]:
        return self.cfg.data.crop

    def predict_fn(self) -> PredictFn:
        raise NotImplementedError

    def windows(self, shape: Sequence[int], overlap: float, tta: int) -> int:
        return count_windows(shape, self.patch, overlap) * tta

    def probabilities(self, image: np.ndarray, *, overlap: float, tta: int, batch_size: int,
                      progress: ProgressFn | None = None) -> np.ndarray:
        """(D, H, W, out_channels) float32 probabilities of a (D, H, W, C) preprocessed image."""
        step = None if progress is None else (lambda n: progress(n * tta))
        return sliding_window_predict(self.predict_fn(), image, self.patch,
                                      self.cfg.model.out_channels, overlap=overlap,
                                      batch_size=batch_size, tta=tta, progress=step)


@dataclasses.dataclass
class KerasMember(_WindowedMember):
    """A trained 3D-UNet as an ensemble member; windows are the size it was trained on."""

    model: keras.Model
    cfg: RunConfig
    name: str = ""
    policy: str = "float32"
    postprocess: PostProcess | None = None  # saved with the export (postprocess.json), if any

    def predict_fn(self) -> PredictFn:
        return keras_predict_fn(self.model)


@dataclasses.dataclass
class OnnxMember(_WindowedMember):
    """An export's ``model.onnx`` run by onnxruntime as an ensemble member: the same windows, TTA
    and post-processing as its :class:`KerasMember`, without TensorFlow or JAX running the network
    (``predict --runtime onnx``). Always float32 (the file is)."""

    session: Any  # onnxruntime.InferenceSession
    cfg: RunConfig
    name: str = ""
    postprocess: PostProcess | None = None
    policy: str = "float32"

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def predict_fn(self) -> PredictFn:
        from unet3d.inference.onnx_runtime import session_predict_fn

        return session_predict_fn(self.session)


def load_onnx_member(folder: str | Path) -> OnnxMember:
    """An export folder's ``model.onnx`` (+ ``config.json``, ``postprocess.json``) as an ensemble
    member on onnxruntime's best provider here (CUDA where it lists it, else the CPU).

    Raises:
        OnnxMissingError: the folder has no ``model.onnx`` (a UserError: one line, exit 2).
        FileNotFoundError: no ``config.json``.
        ValueError: the config or postprocess.json is invalid.
    """
    from unet3d.config import RunConfig
    from unet3d.inference.onnx_runtime import missing, session

    export = ExportFolder(folder)
    if not export.config.is_file():
        raise FileNotFoundError(f"{export.config}: not found; --model must be an export "
                                f"folder, e.g. <experiment>/best")
    if not export.onnx.is_file():
        raise missing(folder)
    return OnnxMember(session=session(export.onnx), cfg=RunConfig.load(export.config),
                      name=str(folder), postprocess=read_saved(folder))


def load_member(folder: str | Path, *, precision: str = "auto") -> KerasMember:
    """An export folder (``model.keras`` + ``config.json``) as an ensemble member.

    The weights are read with Keras safe mode, then copied by layer name into a network rebuilt from
    ``config.json`` under the chosen precision policy (mixed precision where the model was trained
    with it and a GPU runs it), compiled with XLA when the config asks for it on this device. The
    post-processing saved with the export (``postprocess.json``) becomes the member's
    ``postprocess`` (None without that file: an older export, or one without validation cases).

    Raises:
        FileNotFoundError: ``model.keras`` or ``config.json`` is missing.
        ValueError: the config is invalid, the weights do not fit it, or postprocess.json is
            malformed.
    """
    import keras

    from unet3d.config import RunConfig
    from unet3d.training.checkpoint import load_model
    from unet3d.training.model import build_unet3d

    folder = Path(folder)
    export = ExportFolder(folder)
    for need in (export.model, export.config):
        if not need.is_file():
            raise FileNotFoundError(f"{need}: not found; --model must be an export folder "
                                    f"({export.MODEL} + {export.CONFIG}), e.g. <experiment>/best")
    cfg = RunConfig.load(export.config)
    post = read_saved(folder)
    saved = load_model(export.model)
    policy = resolve_policy(precision, cfg, gpu_available())
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_unet3d(dataclasses.replace(cfg.model, deep_supervision=False))
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            layer.set_weights(saved.get_layer(layer.name).get_weights())
        except ValueError as e:
            raise ValueError(f"{export.model}: layer {layer.name} does not match "
                             f"{export.config} ({str(e).splitlines()[0]})") from None
    model.compile(jit_compile=resolve_xla(cfg.train.xla))
    return KerasMember(model=model, cfg=cfg, name=str(folder), policy=policy, postprocess=post)


POSTPROCESS_MODES = ("saved", "none")


def resolve_postprocess(members: Sequence[Member], mode: str = "saved", *,
                        min_et_volume: float | None = None,
                        largest_wt: bool | None = None) -> tuple[PostProcess, str]:
    """The post-processing a prediction applies, and one line saying what it is and where it
    came from.

    Args:
        members: the ensemble, best first (a search's top-k are ranked).
        mode: "saved": the choice saved with the FIRST member's export (an ensemble whose members
            saved different choices uses the first's, and the line says so; a first member without
            postprocess.json has none); "none": no post-processing.
        min_et_volume, largest_wt: when given (not None), override that field of the above.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"--postprocess {mode}: must be one of {', '.join(POSTPROCESS_MODES)}")
    post, origin = PostProcess(), "--postprocess none"
    if mode == "saved":
        first = getattr(members[0], "postprocess", None)
        post = first if first is not None else PostProcess()
        origin = (f"saved with {members[0].name}" if first is not None
                  else f"none saved with {members[0].name}")
        if any(getattr(m, "postprocess", None) != first for m in members[1:]):
            origin += "; other members saved other choices, the first member's is used"
    flags = {"min_et_volume": min_et_volume, "largest_wt": largest_wt}
    given = {k: v for k, v in flags.items() if v is not None}
    if given:
        post = dataclasses.replace(post, **given)
        origin += "; overridden by " + ", ".join(f"--{k.replace('_', '-')}" for k in given)
    return post, f"{post.describe()} ({origin})"


@dataclasses.dataclass
class Prediction:
    """A case's prediction on its original grid.

    labels: (X, Y, Z) uint8 in the label scheme's values; probabilities: (X, Y, Z, K) float32 or None;
    channels: the name of each probability channel; affine/header: the input's.
    """

    case_id: str
    labels: np.ndarray
    probabilities: np.ndarray | None
    channels: tuple[str, ...]
    affine: np.ndarray
    header: Any
    seconds: float
    windows: int


class Predictor:
    """Predicts cases with an ensemble (probabilities averaged over members).

    Softmax members alone are averaged over classes and the class map is the argmax; as soon as one
    member has a region head, every member's probabilities are taken as region probabilities (a
    softmax member's are summed over each region's classes), averaged, and thresholded at 0.5.
    Every member must share one label scheme (its values are written) and input modalities.
    ``postprocess`` None applies the choice saved with the first member (see
    :func:`resolve_postprocess`); ``PostProcess()`` applies none.
    """

    def __init__(self, members: Sequence[Member], *, overlap: float = 0.5, tta: int = 1,
                 batch_size: int = 2, postprocess: PostProcess | None = None,
                 keep_probabilities: bool = False) -> None:
        if not members:
            raise ValueError("a Predictor needs at least one model")
        check_window_options(overlap, tta, batch_size)
        self.members = list(members)
        self.overlap, self.tta, self.batch_size = overlap, tta, batch_size
        self.postprocess = postprocess if postprocess is not None else \
            resolve_postprocess(self.members)[0]
        self.keep_probabilities = keep_probabilities
        self.regions = any(m.head == "regions" for m in self.members)
        self.scheme = self.members[0].scheme
        for m in self.members[1:]:
            if m.scheme != self.scheme or m.in_channels != self.members[0].in_channels:
                from unet3d.errors import OptionError

                raise OptionError(f"ensemble members differ: {m.name} has labels {m.scheme.name} and "
                                 f"{m.in_channels} input channels, {self.members[0].name} "
                                 f"{self.scheme.name} and {self.members[0].in_channels}")

    @property
    def channels(self) -> tuple[str, ...]:
        if self.regions:
            return self.scheme.region_names
        return ("background", *(self.scheme.labels[v] for v in self.scheme.values[1:]))

    def windows(self, shape: Sequence[int]) -> int:
        """Model evaluations (windows x flips, summed over members) for a preprocessed shape."""
        return sum(m.windows(shape, self.overlap, self.tta) for m in self.members)

    def probabilities(self, image: np.ndarray, progress: ProgressFn | None = None) -> np.ndarray:
        """Ensemble-averaged (D, H, W, K) probabilities of a preprocessed (D, H, W, 4) image."""
        acc = None
        for m in self.members:
            p = m.probabilities(image, overlap=self.overlap, tta=self.tta,
                                batch_size=self.batch_size, progress=progress)
            if self.regions and m.head != "regions":
                p = self.scheme.class_probs_to_region_probs(p)
            if acc is None:
                acc = p
            else:
                acc += p
        acc /= len(self.members)
        return acc

    def classes(self, probs: np.ndarray) -> np.ndarray:
        return probabilities_to_classes(probs, "regions" if self.regions else "softmax", self.scheme)

    def predict(self, loaded: LoadedCase, progress: ProgressFn | None = None,
                on_preprocessed: Callable[[tuple[int, ...]], None] | None = None) -> Prediction:
        """Predicts one case read by :func:`unet3d.data.preprocess.load_case`.

        ``on_preprocessed`` is called with the preprocessed (D, H, W) shape before the models run
        (to size a progress bar with :meth:`windows`).
        """
        from unet3d.data.preprocess import preprocess_loaded, restore_to_original

        t0 = time.perf_counter()
        from unet3d.data.discover import DataError

        image, _, meta = preprocess_loaded(dataclasses.replace(loaded, label=None))
        if image.shape[-1] != self.members[0].in_channels:
            raise DataError(f"case {loaded.case.case_id}: has {image.shape[-1]} modalities "
                            f"({', '.join(loaded.case.modalities)}); the model reads "
                            f"{self.members[0].in_channels}")
        if on_preprocessed is not None:
            on_preprocessed(tuple(image.shape[:3]))
        probs = self.probabilities(image, progress)
        classes = self.classes(probs)
        if self.postprocess.active:
            classes = self.postprocess(classes, meta["spacing"], self.scheme)
        labels = self.scheme.to_labels(restore_to_original(classes, meta))
        full = None
        if self.keep_probabilities:
            full = restore_to_original(probs, meta, fill=0)
            if not self.regions:  # outside the brain crop the background is certain
                full[..., 0] = 1.0 - full[..., 1:].sum(axis=-1)
        return Prediction(case_id=loaded.case.case_id, labels=labels, probabilities=full,
                          channels=self.channels, affine=loaded.affine, header=loaded.header,
                          seconds=time.perf_counter() - t0, windows=self.windows(image.shape[:3]))


def write_prediction(pred: Prediction, out_dir: str | Path) -> list[Path]:
    """Writes ``<case_id>.nii.gz`` (uint8 labels) and, with probabilities,
    ``<case_id>_probabilities.nii.gz`` (X, Y, Z, K), stored as uint8 with scale 1/255, both with the
    input's affine and header. Each file is written under a temporary name and renamed into place.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(data: np.ndarray, name: str, slope: float | None) -> None:
        header = pred.header.copy()
        header.set_data_dtype(np.uint8)
        img = nib.Nifti1Image(data, pred.affine, header=header)
        img.header.set_slope_inter(slope, 0.0 if slope is not None else None)
        img.header["descrip"] = b"unet3d prediction"
        target = out_dir / name
        with atomic_path(target, suffix=".nii.gz") as tmp:
            nib.save(img, str(tmp))
        written.append(target)

    save(pred.labels.astype(np.uint8), f"{pred.case_id}.nii.gz", None)
    if pred.probabilities is not None:
        q = np.clip(np.rint(pred.probabilities * 255.0), 0, 255).astype(np.uint8)
        save(q, f"{pred.case_id}_probabilities.nii.gz", 1.0 / 255.0)
    return written
