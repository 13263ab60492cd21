"""Install the skipgan-edge runtime into a ``--system-site-packages`` venv on top of what the device already has.

Run by ``make jetson`` with the venv's own interpreter. A Jetson (JetPack 6) brings TensorRT's Python bindings,
OpenCV built with GStreamer and numpy 1 as system packages; pip knows none of them by the names our requirements use
(Debian's and JetPack's ``cv2`` is not the ``opencv-python-headless`` distribution), so a plain ``pip install`` would
put pip's OpenCV (no GStreamer, so no ``csi://``, ``gst:`` or ``genicam://``) and numpy 2 (which the system's
numpy-1 binaries cannot load) in front of them. Here each runtime requirement is decided on its own:

- numpy: the system's, pinned for every later install, when it satisfies our requirement; otherwise the newest
  numpy of the system's major (never a second major) goes into the venv, and this says so.
- OpenCV: any ``cv2`` the system has is kept; pip's headless build only where there is none.
- onnxruntime: an importable ``onnxruntime`` (JetPack users often have ``onnxruntime-gpu``) is kept.
- everything else: installed only when missing or too old.
- onnx (the ``[onnx]`` extra): where TensorRT is there, for ``build --dry-run`` and, on TensorRT 8.6 (JetPack 6.0), the
  rewrite ``build`` makes for its parser.
- cuda-python: only where TensorRT is there, of the major the driver supports (``skipgan_edge.runtime.cudaenv``).

``JETSON_TENSORRT=optional`` lets a machine without TensorRT (CI) run the same recipe; ``required`` (the default)
stops with one line when TensorRT's bindings are missing. Prints what it kept and what it installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: requirements a device's own build satisfies under another distribution name (or none): the importable module
#: and how to name it. Any importable one is kept (JetPack's OpenCV has GStreamer; onnxruntime-gpu is onnxruntime).
SYSTEM_BUILDS = {
    "opencv-python-headless": ("cv2", "OpenCV"), "opencv-python": ("cv2", "OpenCV"),
    "onnxruntime": ("onnxruntime", "onnxruntime"), "onnxruntime-gpu": ("onnxruntime", "onnxruntime"),
}


def pip(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], capture_output=True, text=True)
    # pip's resolver does not see the system's cv2 (no pip metadata) and says our OpenCV requirement is unmet:
    # that is the point here, so those lines go; everything else pip says is shown
    lines = [ln for ln in p.stderr.splitlines() if "opencv-python-headless" not in ln and "dependency resolver does not currently" not in ln]
    if lines:
        print("\n".join(lines), file=sys.stderr)
    if p.returncode != 0:
        raise SystemExit(f"error: pip install {' '.join(args)} failed (exit {p.returncode}); pip's message is above")


def where(name: str) -> str:
    """'system' or 'venv': where an importable module lives."""
    mod = sys.modules[name]
    return "venv" if str(getattr(mod, "__file__", "")).startswith(sys.prefix) else "system"


def module_version(name: str) -> str | None:
    """The version of an importable module (the system's included), or None when it does not import."""
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a broken system module is as good as none: say so below
        return None
    return str(getattr(mod, "__version__", "unknown"))


def main() -> int:
    trt_mode = os.environ.get("JETSON_TENSORRT", "required")
    if trt_mode not in ("required", "optional"):
        print(f"error: JETSON_TENSORRT must be 'required' or 'optional', got {trt_mode!r}", file=sys.stderr)
        return 2
    if sys.prefix == sys.base_prefix:
        print("error: run this with a venv's python (make jetson makes one with --system-site-packages)", file=sys.stderr)
        return 2
    trt = module_version("tensorrt")
    if trt is None and trt_mode == "required":
        print("error: JetPack's TensorRT Python bindings are missing: sudo apt-get install python3-libnvinfer (JetPack 6), "
              "or JETSON_TENSORRT=optional for the runtime without TensorRT", file=sys.stderr)
        return 2

    # the package itself, nothing else; then read its requirements back from its metadata (with packaging, which
    # Ubuntu's python3 may lack)
    if module_version("packaging") is None:
        pip("packaging>=23")
        importlib.invalidate_caches()
    pip("--no-deps", "-e", str(ROOT))
    from packaging.requirements import Requirement  # pip-installed above when the system has none
    from packaging.version import Version

    reqs = [Requirement(r) for r in md.requires("skipgan-edge") or []]
    reqs = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]

    kept: list[str] = []
    install: list[str] = []
    constraints: list[str] = []
    for r in reqs:
        name = r.name.lower()
        if name == "numpy":
            have = module_version("numpy")
            if have is not None and r.specifier.contains(have, prereleases=True):
                kept.append(f"numpy {have} ({where('numpy')})")
                constraints.append(f"numpy=={have}")
            else:
                major = Version(have).major if have else 1
                install.append(f"numpy{r.specifier},<{major + 1}")
                kept.append(f"numpy: the system's {have or 'none'} is older than {r.specifier}; the newest numpy {major}.x goes into the venv")
                constraints.append(f"numpy<{major + 1}")
        elif name in SYSTEM_BUILDS:
            module, label = SYSTEM_BUILDS[name]
            have = module_version(module)
            if have is not None:
                kept.append(f"{label} {have} ({where(module)})")
            else:
                install.append(str(r))
        else:
            try:
                have = md.version(r.name)
            except md.PackageNotFoundError:
                have = None
            if have is None or not r.specifier.contains(have, prereleases=True):
                install.append(str(r))
    if trt is not None and module_version("onnx") is None:
        # build --dry-run reads the graph with onnx, and on TensorRT 8.6 (JetPack 6.0) build rewrites it for the parser
        install += [str(Requirement(r)).split(";")[0] for r in md.requires("skipgan-edge") or [] if 'extra == "onnx"' in r]
    if trt is not None:
        # the cuda-python whose major the driver supports; one already installed is kept only when it satisfies it
        # (a cuda-python 13 on JetPack 6's CUDA 12 driver fails every call)
        spec = subprocess.run([sys.executable, "-m", "skipgan_edge.runtime.cudaenv", "--pip-spec"], capture_output=True, text=True, check=True)
        want = Requirement(spec.stdout.strip())
        try:
            have_cp: str | None = md.version("cuda-python")
        except md.PackageNotFoundError:
            have_cp = None
        if have_cp is None or not want.specifier.contains(have_cp, prereleases=True):
            install.append(str(want))
        else:
            kept.append(f"cuda-python {have_cp}")

    if install:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
            fh.write("\n".join(constraints) + "\n")
        try:
            pip("-c", fh.name, *install)
        finally:
            os.unlink(fh.name)
    for line in kept:
        print(f"kept: {line}")
    def installed(req: str) -> str:
        name = Requirement(req).name
        try:
            return f"{name} {md.version(name)}"
        except md.PackageNotFoundError:
            return req

    print("installed: " + (", ".join(installed(r) for r in install) if install else "nothing"))
    print(f"TensorRT: {trt or 'not found (JETSON_TENSORRT=optional: the ONNX Runtime backends only)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
