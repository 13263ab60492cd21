"""Matching cuda-python to the CUDA the machine has (JetPack 6: CUDA 12, so never cuda-python 13)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skipgan_edge.runtime.cudaenv import cuda_major, cuda_python_spec, l4t_major, toolkit_cuda_version


def _tree(tmp: Path, version_json: str | None = None, tegra: str | None = None, version_txt: str | None = None) -> Path:
    if version_json is not None:
        (tmp / "usr/local/cuda").mkdir(parents=True, exist_ok=True)
        (tmp / "usr/local/cuda/version.json").write_text(json.dumps({"cuda": {"name": "CUDA SDK", "version": version_json}}))
    if version_txt is not None:
        (tmp / "usr/local/cuda").mkdir(parents=True, exist_ok=True)
        (tmp / "usr/local/cuda/version.txt").write_text(version_txt)
    if tegra is not None:
        (tmp / "etc").mkdir(parents=True, exist_ok=True)
        (tmp / "etc/nv_tegra_release").write_text(tegra)
    return tmp


def test_jetpack6_gets_cuda_python_12(tmp_path: Path) -> None:
    root = _tree(tmp_path, "12.6.68", "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    assert toolkit_cuda_version(root) == (12, 6) and l4t_major(root) == 36
    major, why = cuda_major(root)
    assert major == 12 and "12.6" in why and cuda_python_spec(major) == "cuda-python>=12.6,<13"


def test_the_driver_decides_over_the_toolkit(tmp_path: Path) -> None:
    root = _tree(tmp_path, "13.0.48")
    assert cuda_major(root, driver=(12, 2)) == (12, "driver supports CUDA 12.2")


def test_l4t_release_alone_and_old_toolkits(tmp_path: Path) -> None:
    assert cuda_major(_tree(tmp_path / "a", tegra="# R36 (release), REVISION: 3.0\n"))[0] == 12
    assert toolkit_cuda_version(_tree(tmp_path / "b", version_txt="CUDA Version 10.2.300\n")) == (10, 2)
    with pytest.raises(ValueError, match="PyCUDA"):
        cuda_python_spec(cuda_major(_tree(tmp_path / "c", tegra="# R35 (release), REVISION: 5.0\n"))[0])
    with pytest.raises(ValueError, match="cannot tell"):
        cuda_python_spec(cuda_major(tmp_path / "empty")[0])
