"""Jetson power: the board's total by NVIDIA's rail names, on recorded sysfs trees and tegrastats lines per board."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import pytest

from skipgan_edge.bench.power import PowerSampler, find_rails, parse_tegrastats, tegrastats_total_watts

# (label, mV, mA) per hwmon channel, as the INA3221 driver exposes them
ORIN_NANO = {"1-0040/hwmon/hwmon1": [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 200), ("VDD_SOC", 5000, 300)]}
AGX_ORIN = {"1-0040/hwmon/hwmon3": [("VDD_GPU_SOC", 843, 6170), ("VDD_CPU_CV", 780, 3437), ("VIN_SYS_5V0", 4968, 953)],
            "1-0041/hwmon/hwmon4": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 1800, 341), ("NC", 0, 0)]}
UNKNOWN = {"1-0040/hwmon/hwmon2": [("VDD_SOC", 5000, 300), ("VDD_CPU_GPU_CV", 5000, 200)]}


def _sysfs(root: Path, channels: dict[str, list[tuple[str, int, int]]]) -> Path:
    for rel, chans in channels.items():
        d = root / "sys/bus/i2c/drivers/ina3221" / rel
        d.mkdir(parents=True)
        for i, (label, mv, ma) in enumerate(chans, start=1):
            (d / f"in{i}_label").write_text(label + "\n")
            (d / f"in{i}_input").write_text(f"{mv}\n")
            (d / f"curr{i}_input").write_text(f"{ma}\n")
    return root


def _old_l4t(root: Path) -> Path:
    d = root / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    d.mkdir(parents=True)
    for i, (name, mw) in enumerate([("POM_5V_IN", 2400), ("POM_5V_GPU", 300), ("POM_5V_CPU", 500)]):
        (d / f"rail_name_{i}").write_text(name + "\n")
        (d / f"in_power{i}_input").write_text(f"{mw}\n")
    return root


def test_orin_nano_uses_vdd_in_only(tmp_path: Path) -> None:
    p = PowerSampler(root=_sysfs(tmp_path, ORIN_NANO), tegrastats=None, nvidia_smi=False)
    assert p.source == "ina3221:VDD_IN" and "module input" in (p.scope or "")
    assert p.sample() == pytest.approx(5.0)  # 5000 mV x 1000 mA, the sub-rails not added


def test_agx_orin_sums_its_module_rails_never_one_sub_rail(tmp_path: Path) -> None:
    root = _sysfs(tmp_path, AGX_ORIN)
    assert "NC" not in find_rails(root)
    p = PowerSampler(root=root, tegrastats=None, nvidia_smi=False)
    want = (843 * 6170 + 780 * 3437 + 4968 * 953 + 1800 * 341) / 1e6
    assert p.sample() == pytest.approx(want) and p.source == "ina3221:VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO"
    assert "carrier board not measured" in (p.scope or "")


def test_old_l4t_iio_rails(tmp_path: Path) -> None:
    p = PowerSampler(root=_old_l4t(tmp_path), tegrastats=None, nvidia_smi=False)
    assert p.source == "ina3221:POM_5V_IN" and p.sample() == pytest.approx(2.4)


def test_unknown_board_gets_no_figure_rather_than_a_sub_rail(tmp_path: Path) -> None:
    p = PowerSampler(root=_sysfs(tmp_path, UNKNOWN), tegrastats=None, nvidia_smi=False)
    assert p.source is None and p.sample() is None and "VDD_SOC" in (p.why or "")
    with p:
        time.sleep(0.05)
    assert p.mean_watts is None


@pytest.mark.parametrize(("line", "watts", "rails"), [
    # Orin Nano / NX, JetPack 6
    ("RAM 2254/7620MB (lfb 2x4MB) SWAP 0/3810MB CPU [3%@729,1%@729] EMC_FREQ 0%@2133 GR3D_FREQ 0%@[305] cpu@48.5C "
     "VDD_IN 5190mW/5190mW VDD_CPU_GPU_CV 1106mW/1106mW VDD_SOC 1500mW/1500mW", 5.19, "VDD_IN"),
    # AGX Orin, JetPack 6
    ("RAM 4022/62841MB CPU [1%@2201,0%@2201] GR3D_FREQ 14%@[407,407] NVDLA0_FREQ @1600 CPU@77.281C tj@77.281C "
     "VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 14312mW/12415mW VIN_SYS_5V0 4968mW/5048mW VDDQ_VDD2_1V8AO 1091mW/1091mW",
     (3150 + 14312 + 4968 + 1091) / 1000, "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0+VDDQ_VDD2_1V8AO"),
    # Nano, JetPack 4 (no units)
    ("RAM 1500/3956MB (lfb 1x4MB) CPU [10%@1479,5%@1479] GR3D_FREQ 0%@76 PLL@31C POM_5V_IN 2420/2420 POM_5V_GPU 0/0 "
     "POM_5V_CPU 409/409", 2.42, "POM_5V_IN"),
    # AGX Xavier, JetPack 5
    ("RAM 3000/31920MB CPU [1%@1190] GR3D_FREQ 0%@318 GPU 0mW/0mW CPU 311mW/311mW SOC 1243mW/1243mW CV 0mW/0mW "
     "VDDRQ 311mW/311mW SYS5V 1571mW/1571mW", (311 + 1243 + 311 + 1571) / 1000, "GPU+CPU+SOC+CV+VDDRQ+SYS5V"),
])
def test_tegrastats_lines_per_board(line: str, watts: float, rails: str) -> None:
    assert "RAM" not in parse_tegrastats(line) and "SWAP" not in parse_tegrastats(line)
    got = tegrastats_total_watts(line)
    assert got is not None and got[0] == pytest.approx(watts) and got[1] == rails


def test_tegrastats_fallback_runs_the_tool(tmp_path: Path) -> None:
    """Where sysfs shows no rails, tegrastats (here a script printing recorded AGX Orin lines) is read."""
    tool = tmp_path / "tegrastats"
    tool.write_text("#!/bin/sh\nwhile true; do echo 'RAM 1/2MB VDD_GPU_SOC 1000mW/1000mW VDD_CPU_CV 2000mW/2000mW "
                    "VIN_SYS_5V0 3000mW/3000mW VDDQ_VDD2_1V8AO 500mW/500mW'; sleep 0.02; done\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    p = PowerSampler(root=tmp_path / "no-sysfs", tegrastats=str(tool), nvidia_smi=False)
    assert p.source == "tegrastats"
    with p:
        time.sleep(0.4)
    assert p.mean_watts == pytest.approx(6.5) and p.source.startswith("tegrastats:VDD_GPU_SOC")
