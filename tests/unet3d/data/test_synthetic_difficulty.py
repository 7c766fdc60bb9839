"""The synthetic generator's difficulty levels: easy exactly as before, medium and hard valid cases in
every layout with more lesions, varied cores, unlabelled mimics and (hard) thick slices; the CLI flag."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import run_search
from unet3d import labels
from unet3d.data.discover import discover
from unet3d.data.preprocess import prepare
from unet3d.data.synthetic import (
    DIFFICULTIES,
    LAYOUTS,
    MIN_SIZE,
    _case,
    scheme_of,
    synth_case,
    write_synthetic_dataset,
)
from unet3d.errors import OptionError

S26 = np.ones((3, 3, 3))
# synth_case((20, 20, 20), 1, layout=L) as the generator wrote it before difficulty levels existed
# (brats2024 with cavity=True), hashed by _sha256.
EASY_SHA256 = {
    "brats2021": "318a8b9201e67ff0963a6d8f1c989853d0b9bf3624e1df98410168b516d4b5e2",
    "brats2023": "31aa684050e6ce79378f51508e0a7b9933751a7937b55004b8700da2e6537201",
    "brats2024": "6ff28b143bf59654db1118298e475997a044abe832855b1efc452c6a81f7083d",
    "brats2024-ped": "e0f2bd972cf12e2f8c2dc1a1cc0331345fd32ffed163d618c8fc4640b6cd9e0c",
    "brats-men-rt": "bd5bac9a4c0d3e603cf0e842e7057e6f02faac49cdc20a861107fff8e1d0ca95",
    "msd": "7638ec33345e3c4ea48bb7f01f5fb1757c8d83fd491e471717a4906de55bcf0e",
}
# layout -> (discover's layout, task)
FOUND_AS = {"brats2021": ("brats2021", None), "brats2023": ("brats2023", "GLI"),
            "brats2024": ("brats2023", "GLI"), "brats2024-ped": ("brats2023", "PED"),
            "brats-men-rt": ("brats2023", "MEN-RT"), "msd": ("msd", None)}
CORE_NAMES = ("NCR", "NETC", "ET", "CC", "GTV", "non-enhancing", "enhancing")


def _sha256(images: dict[str, np.ndarray], label: np.ndarray) -> str:
    d = hashlib.sha256()
    for m in sorted(images):
        d.update(m.encode())
        d.update(np.ascontiguousarray(images[m]).tobytes())
    d.update(np.ascontiguousarray(label).tobytes())
    return d.hexdigest()


def _lesions(label: np.ndarray) -> int:
    return ndimage.label(label > 0, structure=S26)[1]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_easy_is_the_generator_of_before(layout):
    cavity = True if layout == "brats2024" else None
    omitted = synth_case((20, 20, 20), 1, layout=layout, cavity=cavity)
    easy = synth_case((20, 20, 20), 1, layout=layout, cavity=cavity, difficulty="easy")
    assert _sha256(*omitted) == _sha256(*easy) == EASY_SHA256[layout]


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_medium_and_hard_are_valid_cases_in_every_layout(tmp_path, difficulty):
    for layout in LAYOUTS:
        out = tmp_path / layout
        write_synthetic_dataset(out, 2, (20, 20, 20), seed=2, layout=layout, difficulty=difficulty)
        ds = discover(out)
        assert (ds.layout, ds.task) == FOUND_AS[layout] and len(ds.labelled) == 2
        scheme = scheme_of(layout)
        core = [v for v, n in scheme.labels.items() if n in CORE_NAMES]
        values = set()
        for k in range(2):
            images, label = synth_case((20, 20, 20), 2 * 100003 + k, layout=layout,
                                       cavity=(k == 1) if layout == "brats2024" else None,
                                       difficulty=difficulty)
            values |= set(np.unique(label).tolist())
            brain = np.any(np.stack(list(images.values())) != 0, axis=0)
            assert not np.any((label > 0) & ~brain), (layout, k)
            assert np.isin(label, core).any(), (layout, k)
        assert values <= set(scheme.values) | {0}, (layout, values)
        assert labels.detect(ds.layout, ds.task, values).name == scheme.name, layout


@pytest.mark.parametrize("difficulty", ["medium", "hard"])
def test_min_size_cases_keep_a_tumour_with_a_core(difficulty):
    """A sample of the measurement behind MIN_SIZE, at each level."""
    for layout in ("brats2021", "brats2024-ped", "brats-men-rt"):
        scheme = scheme_of(layout)
        core = [v for v, n in scheme.labels.items() if n in CORE_NAMES]
        for seed in range(6):
            images, label = synth_case((MIN_SIZE,) * 3, seed, layout=layout, difficulty=difficulty)
            assert np.any(np.stack(list(images.values())) != 0), (layout, seed)
            assert np.isin(label, core).any(), (layout, seed)


def test_harder_levels_have_more_lesions_and_varied_cores():
    counts = {d: [] for d in DIFFICULTIES}
    rims = solid = not_enhancing = 0
    for seed in range(6):
        for d in DIFFICULTIES:
            _, label = synth_case((32, 32, 32), seed, difficulty=d)
            counts[d].append(_lesions(label))
            if d != "hard":
                continue
            comp, n = ndimage.label(label > 0, structure=S26)
            for k in range(1, n + 1):
                et, ncr = (comp == k) & (label == 4), (comp == k) & (label == 1)
                core = et | ncr
                rims += et.any() and ncr.any() and np.array_equal(
                    et, core & ~ndimage.binary_erosion(core))  # a 1-voxel enhancing rim
                solid += et.any() and not ncr.any()
                not_enhancing += ncr.any() and not et.any() and (label == 4).any()
    mean = {d: np.mean(c) for d, c in counts.items()}
    assert counts["easy"] == [1] * 6
    assert mean["easy"] < mean["medium"] < mean["hard"], mean
    assert mean["hard"] >= 2.5 and min(counts["hard"]) >= 2, counts["hard"]
    assert rims and solid and not_enhancing, (rims, solid, not_enhancing)


def test_mimics_are_bright_and_unlabelled():
    wmh_seen = vessel_seen = 0
    for seed in range(4):
        images, label, tissue = _case((32, 32, 32), seed, None, "brats2021", None, "hard")
        flair, t1ce = images["flair"].astype(float), images["t1ce"].astype(float)
        normal_wm = (tissue == 1) & (label == 0)
        wmh, vessel = tissue == 8, tissue == 9
        assert not label[wmh | vessel].any(), seed  # never labelled
        assert not (ndimage.binary_dilation(label > 0, S26) & (wmh | vessel)).any(), seed
        if wmh.any():
            wmh_seen += 1
            assert flair[wmh].mean() > 1.2 * flair[normal_wm].mean(), seed
        if vessel.any():
            vessel_seen += 1
            assert t1ce[vessel].mean() > 1.05 * t1ce[normal_wm].mean(), seed
    assert wmh_seen == 4 and vessel_seen >= 2
    _, _, tissue = _case((32, 32, 32), 0, None, "brats2021", None, "easy")
    assert tissue.max() <= 7  # easy has none


def test_hard_has_thick_slices_and_prepares(tmp_path):
    out = tmp_path / "hard"
    write_synthetic_dataset(out, 3, (24, 24, 24), seed=1, spacing=(1.0, 1.0, 1.2), difficulty="hard")
    ds = discover(out)
    for c in ds.cases:
        np.testing.assert_allclose(nib.load(str(c.label)).affine, np.diag([1.0, 1.0, 3.0, 1.0]))
    entries = prepare(ds.cases, tmp_path / "cache")
    assert [e.meta["spacing"] for e in entries] == [[1.0, 1.0, 3.0]] * 3
    assert all(e.meta["label_voxels"].get("4", 0) + e.meta["label_voxels"].get("1", 0) > 0
               for e in entries)
    write_synthetic_dataset(tmp_path / "medium", 1, (16, 16, 16), difficulty="medium")
    medium = discover(tmp_path / "medium").cases[0].label
    np.testing.assert_allclose(nib.load(str(medium)).affine, np.eye(4))


def test_bad_difficulty_raises_before_writing(tmp_path):
    with pytest.raises(OptionError, match=r"^--difficulty extreme: not one of easy, medium, hard"):
        write_synthetic_dataset(tmp_path / "s", 1, (16, 16, 16), difficulty="extreme")
    assert not (tmp_path / "s").exists()
    with pytest.raises(OptionError, match="not one of"):
        synth_case((16, 16, 16), 0, difficulty="Hard")


def test_cli_synth_difficulty(tmp_path, capsys):
    out = tmp_path / "d"
    assert run_search.main(["synth", "--out", str(out), "--cases", "1", "--shape", "16", "16", "16",
                            "--difficulty", "hard"]) == 0
    assert "hard" in capsys.readouterr().out
    seg = nib.load(str(out / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz"))
    np.testing.assert_allclose(seg.affine, np.diag([1.0, 1.0, 2.5, 1.0]))
    np.testing.assert_array_equal(np.asarray(seg.dataobj),
                                  synth_case((16, 16, 16), 0, difficulty="hard")[1])
    with pytest.raises(SystemExit) as e:
        run_search.main(["synth", "--out", str(tmp_path / "e"), "--difficulty", "extreme"])
    assert e.value.code == 2 and "invalid choice: 'extreme'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
