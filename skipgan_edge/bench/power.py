"""Power sampling during timed iterations: Jetson INA3221 rails (what tegrastats reads) or nvidia-smi.

Jetson: ``/sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label`` name the rails (VDD_IN is the
board input); ``curr*_input`` (mA) × ``in*_input`` (mV) gives mW. Older L4T exposes
``in_power*_input`` (mW) under ``iio:device*``. Desktop: ``nvidia-smi --query-gpu=power.draw``.
The sampler runs in a thread at ``period`` seconds; energy = mean power × duration.
"""

from __future__ import annotations

import glob
import subprocess
import threading
import time
from pathlib import Path


def _read(path: str) -> float | None:
    try:
        return float(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


def find_rails() -> dict[str, tuple[str, ...]]:
    """Rail name -> (current file, voltage file) or (power file,)."""
    rails: dict[str, tuple[str, ...]] = {}
    for label in glob.glob("/sys/bus/i2c/drivers/ina3221*/*/hwmon/hwmon*/in*_label"):
        name = Path(label).read_text().strip()
        idx = Path(label).name[2:].split("_")[0]
        base = Path(label).parent
        curr, volt = base / f"curr{idx}_input", base / f"in{idx}_input"
        if curr.exists() and volt.exists():
            rails[name] = (str(curr), str(volt))
    for p in glob.glob("/sys/bus/i2c/drivers/ina3221x/*/iio:device*/in_power*_input"):
        idx = Path(p).name.split("_")[1].replace("power", "")
        rail_file = Path(p).parent / f"rail_name_{idx}"
        name = rail_file.read_text().strip() if rail_file.exists() else Path(p).name
        rails[name] = (p,)
    return rails


def _nvidia_smi_watts() -> float | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=power.draw", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=2)
        return float(out.stdout.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


class PowerSampler:
    """``with PowerSampler() as p: ...``; then ``p.mean_watts``, ``p.source``; None where nothing is exposed."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.rails = find_rails()
        self.rail = next((r for r in ("VDD_IN", "POM_5V_IN") if r in self.rails), next(iter(self.rails), None))
        self.source = f"ina3221:{self.rail}" if self.rail else ("nvidia-smi" if _nvidia_smi_watts() is not None else None)
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t: threading.Thread | None = None
        self.seconds = 0.0

    def _sample(self) -> float | None:
        if self.rail:
            files = self.rails[self.rail]
            if len(files) == 2:
                c, v = _read(files[0]), _read(files[1])
                return c * v / 1e6 if c is not None and v is not None else None
            p = _read(files[0])
            return p / 1e3 if p is not None else None
        return _nvidia_smi_watts()

    def _loop(self) -> None:
        while not self._stop.is_set():
            w = self._sample()
            if w is not None:
                self.samples.append(w)
            self._stop.wait(self.period)

    def __enter__(self) -> PowerSampler:
        self._t0 = time.perf_counter()
        if self.source:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t:
            self._t.join()
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
