"""Power sampling during timed iterations: the Jetson board's total input, or nvidia-smi on a desktop GPU.

Jetson power monitors (INA3221) expose named rails in sysfs:
``/sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label`` with ``curr*_input`` (mA) and
``in*_input`` (mV), or on older L4T ``iio:device*/in_power*_input`` (mW) with ``rail_name_*``.
Which rail is "the total" depends on the board, by NVIDIA's rail names (:data:`TOTAL_RAILS`):

* Orin Nano, Orin NX, Xavier NX: ``VDD_IN``, the module's input; the other rails
  (``VDD_CPU_GPU_CV``, ``VDD_SOC``) are parts of it and are never added to it.
* Nano, TX1, TX2: ``POM_5V_IN`` (likewise a total; ``POM_5V_GPU``/``POM_5V_CPU`` are parts).
* AGX Orin: there is no input rail. The module's rails ``VDD_GPU_SOC``, ``VDD_CPU_CV``,
  ``VIN_SYS_5V0`` and ``VDDQ_VDD2_1V8AO`` are summed (module power; the carrier board is not
  measured, and the result says so). Never one sub-rail taken as the total.
* AGX Xavier: likewise summed, ``GPU``, ``CPU``, ``SOC``, ``CV``, ``VDDRQ``, ``SYS5V``.

A board whose rails match none of these gets no power figure (``source`` None, ``why`` says
which rails it saw) rather than a wrong one. Where sysfs shows no rails, ``tegrastats`` is run
and its ``NAME cur/avg`` fields (``mW`` on JetPack 5/6, bare numbers before) are read with the
same rules. Desktop GPUs: ``nvidia-smi --query-gpu=power.draw`` (the GPU board only). The sampler
runs in a thread at ``period`` seconds; energy = mean power × duration.
"""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

#: (board family, rails whose sum is the total, what that total covers), first match wins
TOTAL_RAILS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Orin Nano / Orin NX / Xavier NX", ("VDD_IN",), "module input"),
    ("Nano / TX1 / TX2", ("POM_5V_IN",), "module input"),
    ("AGX Orin", ("VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"), "module rails summed (no input rail; carrier board not measured)"),
    ("AGX Xavier", ("GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"), "module rails summed (no input rail; carrier board not measured)"),
)
TEGRASTATS_RAIL = re.compile(r"(?<![\w@])([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


def _read(path: str) -> float | None:
    try:
        return float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def find_rails(root: Path = Path("/")) -> dict[str, tuple[str, ...]]:
    """Rail name -> (current file, voltage file) or (power file,), from the sysfs tree under ``root``."""
    rails: dict[str, tuple[str, ...]] = {}
    base = str(Path(root) / "sys/bus/i2c/drivers")
    for label in sorted(glob.glob(f"{base}/ina3221*/*/hwmon/hwmon*/in*_label")):
        try:
            name = Path(label).read_text().strip()
        except OSError:
            continue
        idx = Path(label).name[2:].split("_")[0]
        d = Path(label).parent
        curr, volt = d / f"curr{idx}_input", d / f"in{idx}_input"
        if name and name != "NC" and curr.exists() and volt.exists():
            rails[name] = (str(curr), str(volt))
    for p in sorted(glob.glob(f"{base}/ina3221x/*/iio:device*/in_power*_input")):
        idx = Path(p).name.split("_")[1].replace("power", "")
        rail_file = Path(p).parent / f"rail_name_{idx}"
        try:
            name = rail_file.read_text().strip()
        except OSError:
            continue
        rails[name] = (p,)
    return rails


def total_rails(names: Iterable[str]) -> tuple[str, tuple[str, ...], str] | None:
    """The board profile whose total rails are all among ``names``, or None."""
    have = set(names)
    return next((p for p in TOTAL_RAILS if set(p[1]) <= have), None)


def parse_tegrastats(line: str) -> dict[str, float]:
    """Rail name -> current milliwatts from one tegrastats line."""
    return {m.group(1): float(m.group(2)) for m in TEGRASTATS_RAIL.finditer(line)}


def tegrastats_total_watts(line: str) -> tuple[float, str] | None:
    """Total watts and the rails summed, from one tegrastats line, by the same board rules as sysfs."""
    rails = parse_tegrastats(line)
    prof = total_rails(rails)
    if prof is None:
        return None
    return sum(rails[r] for r in prof[1]) / 1000.0, "+".join(prof[1])


def _nvidia_smi_watts() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=2)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class PowerSampler:
    """``with PowerSampler() as p: ...``; then ``p.mean_watts``, ``p.source``, ``p.scope``; None where nothing is exposed."""

    def __init__(self, period: float = 0.05, root: Path = Path("/"), tegrastats: str | None = "tegrastats",
                 nvidia_smi: bool = True) -> None:
        self.period = period
        self.rails = find_rails(root)
        self.samples: list[float] = []
        self.why: str | None = None
        self.scope: str | None = None
        self._stop = threading.Event()
        self._t: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.seconds = 0.0
        prof = total_rails(self.rails)
        self.total: tuple[str, ...] = prof[1] if prof else ()
        self.tegrastats = shutil.which(tegrastats) if tegrastats else None
        if prof:
            self.source: str | None = "ina3221:" + "+".join(prof[1])
            self.scope = f"{prof[0]}: {prof[2]}"
        elif self.tegrastats:
            self.source, self.scope = "tegrastats", "board rules applied to tegrastats rails"
        elif self.rails:
            self.source = None
            self.why = (f"power rails {sorted(self.rails)} match no known Jetson board's total-input rails "
                        f"(VDD_IN, POM_5V_IN, or AGX Orin's/AGX Xavier's full set); no power figure rather than a partial one")
        elif nvidia_smi and _nvidia_smi_watts() is not None:
            self.source, self.scope = "nvidia-smi", "GPU board power"
        else:
            self.source, self.why = None, "no power monitor found (no INA3221 rails, tegrastats or nvidia-smi)"

    def sample(self) -> float | None:
        """One reading in watts (sysfs rails or nvidia-smi)."""
        if self.total:
            watts = 0.0
            for r in self.total:
                files = self.rails[r]
                if len(files) == 2:
                    c, v = _read(files[0]), _read(files[1])
                    if c is None or v is None:
                        return None
                    watts += c * v / 1e6
                else:
                    p = _read(files[0])
                    if p is None:
                        return None
                    watts += p / 1e3
            return watts
        if self.source == "nvidia-smi":
            return _nvidia_smi_watts()
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            w = self.sample()
            if w is not None:
                self.samples.append(w)
            self._stop.wait(self.period)

    def _tegrastats_loop(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            got = tegrastats_total_watts(line)
            if got is not None:
                self.samples.append(got[0])
                self.source = f"tegrastats:{got[1]}"
            elif self.why is None and parse_tegrastats(line):
                self.why = f"tegrastats rails {sorted(parse_tegrastats(line))} match no known board's total"
            if self._stop.is_set():
                break

    def __enter__(self) -> PowerSampler:
        self._t0 = time.perf_counter()
        if self.source == "tegrastats" and self.tegrastats:
            self._proc = subprocess.Popen([self.tegrastats, "--interval", str(max(int(self.period * 1000), 10))],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._t = threading.Thread(target=self._tegrastats_loop, daemon=True)
            self._t.start()
        elif self.source:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._t:
            self._t.join(timeout=3)
        self.seconds = time.perf_counter() - self._t0

    @property
    def mean_watts(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def jetson_power_mode() -> str | None:
    try:
        out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip().replace("\n", "; ") or None
    except (OSError, subprocess.SubprocessError):
        return None
