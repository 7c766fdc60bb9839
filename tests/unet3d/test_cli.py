from __future__ import annotations

import json

import pytest
from conftest import error_line, run_cli


@pytest.mark.parametrize("cmd, must", [
    ([], ["synth", "prepare", "train", "search", "retrain-best"]),
    (["synth"], ["--out", "--cases", "--shape", "--layout", "brats2023", "brats-men-rt"]),
    (["prepare"], ["--data", "--cache", "--labels", "BraTS 2023-2026", "2019/2020", "MSD"]),
    (["train"], ["--data", "--preset", "--config", "--epochs", "--fold", "--out", "--resume",
                 "--precision", "--xla", "nvidia", "--workers", "--scale-lr"]),
    (["search"], ["--data", "--labels", "--objective", "--space", "--engine", "--num-samples",
                  "--max-epochs", "--grace-period",
                  "--reduction-factor", "--time-attr", "--cpus-per-trial", "--gpus-per-trial",
                  "--max-concurrent", "--max-failures", "--address", "--out", "--name", "--seed",
                  "--resume", "--workers-per-trial", "--kt-algorithm"]),
    (["retrain-best"], ["experiment", "--epochs", "--folds", "--resume"]),
])
def test_help_is_complete(cmd, must):
    r = run_cli(*cmd, "--help", timeout=120)
    assert r.returncode == 0
    for word in must:
        assert word in r.stdout, word


def test_synth_writes_the_requested_cases(tmp_path):
    r = run_cli("synth", "--out", str(tmp_path / "d"), "--cases", "3", "--shape", "32", "24", "16",
                timeout=120)
    assert r.returncode == 0, r.stderr
    import nibabel as nib

    cases = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert cases == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    assert nib.load(tmp_path / "d" / cases[0] / f"{cases[0]}_flair.nii.gz").shape == (32, 24, 16)


def test_bad_config_file_gives_aerror_line(synth16, tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"model": {"depth": 4, "norm": "layer"}}))
    r = run_cli("train", "--data", str(synth16), "--config", str(cfg), "--out", str(tmp_path / "o"),
                timeout=120)
    line = error_line(r)
    assert str(cfg) in line and "model.norm='layer'" in line
    assert not (tmp_path / "o").exists()


def test_config_crop_rule_gives_aerror_line(synth16, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {depth: 5}\ndata: {crop: [40, 40, 40]}\n")
    r = run_cli("train", "--data", str(synth16), "--config", str(cfg), "--out", str(tmp_path / "o"),
                timeout=120)
    assert "must be divisible by 2**(model.depth-1)=16" in error_line(r)


def test_missing_data_folder_gives_aerror_line(tmp_path):
    r = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), timeout=120)
    assert "data folder does not exist" in error_line(r)
