"""Which CUDA major this machine can run, and the cuda-python that matches it.

cuda-python's major version must not exceed what the driver supports: cuda-python 13 needs a
CUDA 13 driver (R580 or newer), while JetPack 6 ships CUDA 12.x with an R36 (540-series) driver,
so a plain ``pip install cuda-python`` gives every call CUDA error 35 ("driver version is
insufficient") there. The driver's own answer (``cuDriverGetVersion`` in libcuda) decides; without a
loadable driver, the toolkit's ``version.json`` and then the Jetson L4T release stand in.

:func:`cuda_python_mismatch` is the one line ``doctor`` and ``gpu_info`` give when the installed cuda-python
is newer than the driver (which cuda-python, which CUDA the driver supports, what to install).

``python -m skipgan_edge.runtime.cudaenv --pip-spec`` prints the requirement ``make jetson``
installs, e.g. ``cuda-python>=12.6.1,<13``: 12.6.1 is the first release with ``cuda.bindings``, the
module skipgan-edge imports (NVIDIA/cuda-python, cuda-bindings release notes 12.6.1: "``cuda.cudart`` ->
``cuda.bindings.runtime``", the old names kept as deprecated aliases through 12.x; 13.x has no
``cuda.cudart``). 12.6.0 has only ``cuda.cudart`` yet satisfies ``>=12.6``: pip keeps an installed 12.6.0
(or picks it where it is the newest 12.x available) and skipgan-edge cannot import it.
"""

from __future__ import annotations

import ctypes
import json
import re
import sys
from pathlib import Path

#: Jetson Linux (L4T) major → CUDA major of its JetPack: R35 = JetPack 5 (CUDA 11.4), R36 = JetPack 6 (CUDA 12.x)
L4T_CUDA = {32: 10, 34: 11, 35: 11, 36: 12, 38: 13}
#: cuda-python requirement per CUDA major (None: no cuda-python with cuda.bindings exists; use PyCUDA)
CUDA_PYTHON_SPECS = {12: "cuda-python>=12.6.1,<13", 13: "cuda-python>=13.0,<14"}


def driver_cuda_version() -> tuple[int, int] | None:
    """(major, minor) of the newest CUDA the installed driver supports, or None without a driver."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        v = ctypes.c_int(0)
        if cuda.cuDriverGetVersion(ctypes.byref(v)) == 0 and v.value > 0:
            return v.value // 1000, (v.value % 1000) // 10
    return None


def toolkit_cuda_version(root: Path = Path("/")) -> tuple[int, int] | None:
    """The CUDA toolkit under ``root``/usr/local/cuda (version.json, or version.txt on older toolkits)."""
    base = Path(root) / "usr" / "local" / "cuda"
    try:
        data = json.loads((base / "version.json").read_text())
        major, minor = str(data["cuda"]["version"]).split(".")[:2]
        return int(major), int(minor)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        m = re.search(r"CUDA Version (\d+)\.(\d+)", (base / "version.txt").read_text())
        return (int(m.group(1)), int(m.group(2))) if m else None
    except OSError:
        return None


def l4t_major(root: Path = Path("/")) -> int | None:
    """Jetson Linux major from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.0, ...")."""
    try:
        m = re.match(r"#\s*R(\d+)", (Path(root) / "etc" / "nv_tegra_release").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def cuda_major(root: Path = Path("/"), driver: tuple[int, int] | None = None) -> tuple[int | None, str]:
    """The CUDA major to match, and where that answer came from."""
    drv = driver if driver is not None else (driver_cuda_version() if Path(root) == Path("/") else None)
    if drv is not None:
        return drv[0], f"driver supports CUDA {drv[0]}.{drv[1]}"
    tk = toolkit_cuda_version(root)
    if tk is not None:
        return tk[0], f"CUDA toolkit {tk[0]}.{tk[1]}"
    l4t = l4t_major(root)
    if l4t is not None and l4t in L4T_CUDA:
        return L4T_CUDA[l4t], f"Jetson Linux R{l4t}"
    return None, "no CUDA driver, toolkit or Jetson Linux release found"


def cuda_python_spec(major: int | None) -> str:
    """The cuda-python requirement for a CUDA major (one-line ValueError if there is none)."""
    if major is None:
        raise ValueError("cannot tell the CUDA version here (no driver, toolkit or L4T release); install cuda-python "
                         "by hand: pip install 'cuda-python>=12.6.1,<13' for CUDA 12 (JetPack 6)")
    if major not in CUDA_PYTHON_SPECS:
        raise ValueError(f"CUDA {major} has no cuda-python with cuda.bindings (it starts at 12.6.1); on JetPack 5 use "
                         "PyCUDA: pip install 'skipgan-edge[pycuda]' and --cuda-api pycuda")
    return CUDA_PYTHON_SPECS[major]


def cuda_python_version() -> str | None:
    """The installed cuda-python (its ``cuda-bindings`` part, the module skipgan-edge imports), or None."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def mismatch_line(version: str | None, driver: tuple[int, int] | None) -> str | None:
    """One line when cuda-python ``version`` is for a newer CUDA major than ``driver`` supports, else None
    (no cuda-python, no driver, or they match)."""
    if version is None or driver is None:
        return None
    m = re.match(r"(\d+)", version)
    if m is None or int(m.group(1)) <= driver[0]:
        return None
    spec = CUDA_PYTHON_SPECS.get(driver[0])
    fix = (f"pip install '{spec}'" if spec is not None
           else "no cuda-python has cuda.bindings for it: pip install 'skipgan-edge[pycuda]' and use --cuda-api pycuda")
    return (f"cuda-python {version} needs a CUDA {m.group(1)} driver, but this driver supports CUDA {driver[0]}.{driver[1]}"
            f"{' (JetPack 6)' if driver[0] == 12 and l4t_major() == 36 else ''}: {fix}")


def cuda_python_mismatch() -> str | None:
    """:func:`mismatch_line` for this machine: the installed cuda-python against the loaded driver."""
    return mismatch_line(cuda_python_version(), driver_cuda_version())


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    major, why = cuda_major()
    try:
        spec = cuda_python_spec(major)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(spec if "--pip-spec" in args else f"{spec}  ({why})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
