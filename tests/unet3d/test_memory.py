"""The memory model (unet3d.planning.memory): parameter counts against Keras, the hand-derived tensor counts,
the direction of every effect, and the estimate's interface. No training runs here: the predicted vs
measured check is benchmarks/bench_memory.py (BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from unet3d.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unet3d.planning import memory

GIB = memory.GIB


def _cfg(crop: int | tuple[int, int, int] = 64, *, batch: int = 2, precision: str = "fp32",
         val_batch: int = 2, loss: str = "dice_ce", **model) -> RunConfig:
    crop = (crop,) * 3 if isinstance(crop, int) else crop
    return RunConfig(model=ModelConfig(**{"depth": 4, "base_filters": 16, **model}),
                     train=TrainConfig(batch_size=batch, precision=precision,
                                       val_batch_size=val_batch, loss=loss),
                     data=DataConfig(crop=crop))


KERAS_GRID = [
    dict(depth=2, base_filters=4, norm="instance"),
    dict(depth=3, base_filters=4, norm="batch", upsampling="nearest"),
    dict(depth=3, base_filters=8, norm="group", group_norm_groups=4, max_filters=16),
    dict(depth=4, base_filters=4, norm="none", deep_supervision=True, deep_supervision_heads=2),
    dict(depth=3, base_filters=4, head="regions", output_kernel=1),
]


def test_parameter_count_equals_keras_count_params():
    from unet3d.training.model import build_unet3d

    for model in KERAS_GRID:
        loss = "region" if model.get("head") == "regions" else "dice_ce"
        cfg = _cfg(16, loss=loss, **model)
        assert memory.parameter_count(cfg) == build_unet3d(cfg.model).count_params(), model


def test_activation_elements_match_a_hand_count():
    # depth 2, filters (2, 4), crop 4^3: 64 voxels at level 0, 8 at level 1; 4 modalities, 4 classes.
    cfg = _cfg(4, depth=2, base_filters=2)
    expected = (64 * 4  # input
                + 2 * 3 * 64 * 2  # level 0: 2 blocks x (conv output, normalised, activated)
                + 2 * 3 * 8 * 4  # level 1
                + 64 * 2 * 2 + 2 * 3 * 64 * 2  # decoder 0: concatenation, 2 blocks
                + 5 * 64 * 4)  # probabilities, 2 one-hots, clipped and log probabilities
    assert memory.activation_elements(cfg) == expected == 3520
    none = _cfg(4, depth=2, base_filters=2, norm="none")
    assert memory.activation_elements(none) == expected - (2 + 2) * 64 * 2 - 2 * 8 * 4
    assert memory.largest_layer_elements(cfg) == 64 * 2 * 2


@pytest.mark.parametrize("device", memory.DEVICES)
def test_bigger_configurations_need_more(device):
    base = memory.estimate(_cfg(), device=device)
    for bigger in (_cfg(96), _cfg((64, 64, 96)), _cfg(batch=4), _cfg(base_filters=32),
                   _cfg(depth=5), _cfg(deep_supervision=True), _cfg(upsampling="nearest")):
        e = memory.estimate(bigger, device=device)
        assert e.total > base.total, bigger
        assert e.parts["activations"] > base.parts["activations"], bigger


@pytest.mark.parametrize("device", memory.DEVICES)
def test_mixed_precision_halves_activations_about(device):
    fp32 = memory.estimate(_cfg(), device=device)
    for precision in ("mixed_float16", "mixed_bfloat16"):
        mixed = memory.estimate(_cfg(precision=precision), device=device)
        ratio = mixed.parts["activations"] / fp32.parts["activations"]
        assert 0.5 <= ratio < 0.8, (device, precision, ratio)
        assert mixed.parts["workspace"] * 2 == pytest.approx(fp32.parts["workspace"], abs=2)
        assert mixed.total < fp32.total


def test_gpu_keeps_fewer_tensors_than_the_cpu_graph():
    """XLA fuses normalisation and activation on a GPU: fewer kept tensors than TF's CPU graph."""
    cfg, k = _cfg(), memory.CONSTANTS["gpu"]
    cpu = memory.estimate(cfg, device="cpu", constants=k)  # the same constants: tensors alone
    gpu = memory.estimate(cfg, device="gpu")
    assert gpu.parts["activations"] < 0.8 * cpu.parts["activations"]
    assert gpu.parts["data"] == 0 < cpu.parts["data"]
    assert memory.CONSTANTS["gpu"].measured and memory.CONSTANTS["cpu"].measured


# What the training processes held on an NVIDIA H200 under Keras JAX (benchmarks/bench_memory_gpu.py,
# "process" column, BENCHMARKS.md "GPU memory"): the GPU constants are fitted on these rows.
H200_PROCESS_GIB = [
    ({"preset": "nvidia", "precision": "mixed_bfloat16"}, 14.57),
    ({"preset": "nvidia", "precision": "fp32"}, 24.56),
    ({"preset": "gpu-mid", "precision": "mixed_float16"}, 4.57),
    ({"crop": 64, "batch": 1, "val_batch": 8, "precision": "fp32"}, 4.56),
]


@pytest.mark.parametrize("row,measured", H200_PROCESS_GIB)
def test_the_gpu_estimate_is_within_its_fit_of_the_h200_measurements(row, measured):
    from unet3d.config import preset

    if "preset" in row:
        cfg = preset(row["preset"]).replace(train={"precision": row["precision"]})
    else:
        cfg = _cfg(row["crop"], batch=row["batch"], val_batch=row["val_batch"],
                   precision=row["precision"])
    predicted = memory.estimate(cfg, device="gpu").gib
    assert abs(predicted - measured) / measured < 0.16, (predicted, measured)


def test_parameters_cost_weights_and_optimizer_state():
    cfg = _cfg()
    e = memory.estimate(cfg)
    p = memory.parameter_count(cfg)
    assert (e.parts["weights"], e.parts["optimizer"]) == (4 * p, 12 * p)
    mixed = memory.estimate(_cfg(precision="mixed_bfloat16"))
    assert mixed.parts["weights"] == 6 * p  # float32 masters + compute-dtype copies


def test_validation_volume_and_mapped_files_count_on_cpu_only():
    small = _cfg(32, depth=3, base_filters=8, batch=1)
    brats = (140, 172, 140)
    cpu = memory.estimate(small, volume_shape=brats)
    assert cpu.phase == "validation" and cpu.total > memory.estimate(small).total
    assert cpu.parts["data"] > 70 * 140 * 172 * 140
    gpu = memory.estimate(small, device="gpu", volume_shape=brats)
    assert gpu.total == memory.estimate(small, device="gpu").total
    for cfg, shape in ((_cfg(), None), (small, brats)):  # both phases hold the mapped pages
        plain = memory.estimate(cfg, volume_shape=shape)
        mapped = memory.estimate(cfg, volume_shape=shape, mapped_bytes=GIB)
        assert mapped.total - plain.total == GIB and mapped.phase == plain.phase


def test_the_cpu_data_part_matches_a_hand_count():
    """The input pipeline and validation arrays, counted by hand for a 64^3 crop, 4 modalities,
    4 classes (a crop is 64^3 x (4 float32 channels + a uint8 label) = 4,456,448 bytes)."""
    crop, element = 64**3, 64**3 * 17
    train = memory.estimate(_cfg(batch=1))
    # two batches of 1 and 4 crops in tf.data's parallel map stages; mapped pages on top
    assert train.phase == "train" and train.parts["data"] == 6 * element == 26_738_688
    mapped = memory.estimate(_cfg(batch=1), mapped_bytes=1000)
    assert mapped.parts["data"] == 26_738_688 + 1000
    # validation of a 48x64x80 case with a 64^3 crop, 16 windows a batch: the image (4 x 4 B a
    # voxel) and its copy padded to 64x64x80, the accumulators (4 x 4 + 4 B a padded voxel), 43 B
    # of arrays a voxel, the windows and their probabilities (16 x 64^3 x (16 + 32) B), the pipeline
    voxels, padded = 48 * 64 * 80, 64 * 64 * 80
    val = memory.estimate(_cfg(batch=1, val_batch=16), volume_shape=(48, 64, 80))
    expected = (16 * (voxels + padded) + 20 * padded + 43 * voxels + 16 * crop * 48
                + 6 * element)
    assert val.phase == "validation" and val.parts["data"] == expected == 254_361_600
    # a case the crop's size: no padded copy
    same = memory.estimate(_cfg(batch=1, val_batch=16))
    assert same.parts["data"] == 16 * crop + 20 * crop + 43 * crop + 16 * crop * 48 + 6 * element


def test_a_large_validation_batch_makes_validation_the_peak():
    train = memory.estimate(_cfg(batch=1))
    val = memory.estimate(_cfg(batch=1, val_batch=16))
    assert train.phase == "train" and val.phase == "validation"
    assert val.total > train.total and val.parts["workspace"] == 0


def test_constants_scale_their_parts():
    cfg = _cfg()
    k = memory.CONSTANTS["cpu"]
    e = memory.estimate(cfg)
    doubled = memory.estimate(cfg, constants=dataclasses.replace(
        k, runtime=2 * k.runtime, activation_factor=2 * k.activation_factor,
        workspace_layers=2 * k.workspace_layers))
    for part in ("runtime", "activations", "workspace"):
        assert doubled.parts[part] == pytest.approx(2 * e.parts[part], abs=2), part
    assert e.parts["runtime"] == pytest.approx(1.0 * GIB, rel=0.1)  # measured: ~1 GiB on CPU


def test_reason_fits_and_to_dict():
    e = memory.MemoryEstimate(device="cpu", parts={"runtime": int(31.2 * GIB), "data": 0})
    assert e.reason(24) == "needs 31.2 GiB > 24.0 GiB"
    assert e.reason(31.17) == "needs 31.20 GiB > 31.17 GiB"  # never "31.2 > 31.2"
    assert re.fullmatch(r"needs \d+\.\d GiB > 8\.0 GiB", memory.estimate(_cfg()).reason(8))
    assert not e.fits(24) and e.fits(31.2) and e.fits(32)
    d = memory.estimate(_cfg(), volume_shape=(95, 104, 81)).to_dict()
    assert d["device"] == "cpu" and d["phase"] in ("train", "validation")
    assert list(d["parts_gib"]) == list(memory.PARTS)
    for v in (d["total_gib"], *d["parts_gib"].values()):
        assert v == round(v, 3)
    assert d["total_gib"] == pytest.approx(sum(d["parts_gib"].values()), abs=0.01)


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="device='tpu'"):
        memory.estimate(_cfg(), device="tpu")
    with pytest.raises(ValueError, match="volume_shape"):
        memory.estimate(_cfg(), volume_shape=(64, 64))


def test_the_module_does_not_import_tensorflow():
    code = "import sys, unet3d.planning.memory; print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["False", "False"], r.stderr


def test_a_runs_measured_peak_is_its_own_after_another_in_the_same_process():
    """A trainer resets the measured peak before it trains (unet3d.runtime.reset_peak_memory): a
    notebook's second run, a Keras Tuner trial or a Ray worker's next trial reports its own peak,
    not the largest of the process's earlier ones. In a fresh process (no TensorFlow): 600 MB
    allocated and freed, then the peak before and after the reset."""
    code = ("import numpy as np\n"
            "from unet3d.runtime import peak_memory_gib, reset_peak_memory\n"
            "a = np.ones(600 * 2**20 // 8); del a\n"
            "before = peak_memory_gib(gpu=False); reset_peak_memory(gpu=False)\n"
            "print(before, peak_memory_gib(gpu=False))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    before, after = map(float, out.split())
    assert before > 0.6 and after < before - 0.5, (before, after)


def test_the_gpu_memory_is_the_smallest_visible_cards_from_nvidia_smi(tmp_path, monkeypatch):
    from unet3d.runtime import gpu_memory_gib, nvidia_smi

    smi = tmp_path / "nvidia-smi"  # two cards, as `--format=csv,noheader,nounits` lists them
    smi.write_text("#!/bin/sh\n"
                   "case \"$*\" in *index,memory.total*) printf '0, 81559\\n1, 40960\\n';;\n"
                   "*) printf 'NVIDIA H100 80GB HBM3, 81559, 570.86\\n';; esac\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_memory_gib() == 40.0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpu_memory_gib() == pytest.approx(81559 / 1024)
    assert nvidia_smi("name", "memory.total", "driver_version") == [
        ["NVIDIA H100 80GB HBM3", "81559", "570.86"]]
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu_memory_gib() is None and nvidia_smi("name") is None
