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
    assert major == 12 and "12.6" in why and cuda_python_spec(major) == "cuda-python>=12.6.1,<13"


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


def test_cuda_python_newer_than_the_driver_is_one_line_naming_both_and_the_fix() -> None:
    from skipgan_edge.runtime.cudaenv import mismatch_line

    line = mismatch_line("13.0.1", (12, 6))
    assert line is not None and "\n" not in line
    assert "cuda-python 13.0.1" in line and "CUDA 12.6" in line and "pip install 'cuda-python>=12.6.1,<13'" in line
    assert mismatch_line("12.9.0", (12, 2)) is None and mismatch_line("12.9.0", (13, 0)) is None  # older bindings run on newer drivers
    assert mismatch_line(None, (12, 6)) is None and mismatch_line("13.0.1", None) is None
    assert "--cuda-api pycuda" in (mismatch_line("12.6.0", (11, 4)) or "")  # JetPack 5: no cuda.bindings for CUDA 11


def test_doctor_and_gpu_info_name_cuda_python_13_on_a_cuda_12_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """JetPack 6's case: cuda-python 13 installed, a driver that supports CUDA 12.6 (neither can be arranged on this
    machine, so both answers are stood in): doctor's CUDA line, its missing list and gpu_info all name the pair and the fix."""
    from skipgan_edge import doctor
    from skipgan_edge.errors import EngineError
    from skipgan_edge.runtime import cudaenv, engine_file

    monkeypatch.setattr(cudaenv, "driver_cuda_version", lambda: (12, 6))
    monkeypatch.setattr(cudaenv, "cuda_python_version", lambda: "13.0.1")
    line = doctor.cuda_line()
    assert line == "CUDA: cuda-python 13.0.1 needs a CUDA 13 driver, but this driver supports CUDA 12.6: pip install 'cuda-python>=12.6.1,<13'"
    assert any("cuda-python>=12.6.1,<13" in m for m in doctor.gpu_stack_missing(tensorrt=False))
    try:
        info = engine_file.gpu_info()
    except EngineError as exc:  # no GPU visible through PyCUDA or torch either (this machine): the error is the mismatch line
        assert str(exc).startswith("cuda-python 13.0.1 needs a CUDA 13 driver") and "cuda-python>=12.6.1,<13" in str(exc)
    else:  # a GPU seen another way: the record still names the mismatch
        assert "cuda-python>=12.6.1,<13" in info["cuda_python"]
    monkeypatch.setattr(cudaenv, "cuda_python_version", lambda: "12.9.0")
    assert doctor.cuda_line() == "CUDA: driver supports CUDA 12.6; cuda-python 12.9.0, a match"


def test_doctor_without_a_driver_says_so_and_not_a_driver_upgrade() -> None:
    """No libcuda loaded (a machine without an NVIDIA GPU): the missing item is the GPU and its driver, not the CUDA
    runtime's error 35 ("driver version is insufficient"), which reads as "upgrade the driver"."""
    from skipgan_edge import doctor
    from skipgan_edge.runtime.cudaenv import driver_cuda_version

    missing = doctor.gpu_stack_missing(tensorrt=False)
    text = "\n".join(doctor.report())
    if driver_cuda_version() is None:
        assert "an NVIDIA GPU and its driver (no libcuda loaded)" in missing and "insufficient" not in text, text
    else:  # a driver is loaded: no such item
        assert not any("no libcuda loaded" in m for m in missing)


def test_doctor_names_the_missing_driver_before_asking_the_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no libcuda (stood in: on a GPU machine the real answer is a version), the CUDA runtime is not asked at all:
    its answer there is error 35, "driver version is insufficient"."""
    from skipgan_edge import doctor
    from skipgan_edge.runtime import cudaenv

    monkeypatch.setattr(cudaenv, "driver_cuda_version", lambda: None)
    monkeypatch.setattr(cudaenv, "cuda_python_mismatch", lambda: None)
    import importlib.util

    has_cuda_python = importlib.util.find_spec("cuda") is not None  # without it, that is the one thing missing
    missing = doctor.gpu_stack_missing(tensorrt=False)
    assert missing == (["an NVIDIA GPU and its driver (no libcuda loaded)"] if has_cuda_python else [missing[0]]), missing
    assert has_cuda_python or missing[0].startswith("cuda-python (")
