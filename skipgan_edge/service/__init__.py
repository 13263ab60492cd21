"""The service wing: what serves the runtime to a plant, one layer above it.

``serve`` (a cell of cameras as one process, :mod:`.serve`), MQTT (:mod:`.mqtt`), Prometheus (:mod:`.prom`),
the runtime's library call with those sinks (:mod:`.api`), and Triton: the model repository
(:mod:`.triton_repo`, with the Python backend's :mod:`.triton_model`), the server ``triton-serve`` starts
(:mod:`.triton_server`) and the ``--backend triton://`` client (:mod:`.triton_client`). The runtime below knows
nothing of this package: importing it registers the ``triton`` scheme with the runtime's backends.
"""

from __future__ import annotations

from typing import Any

from skipgan_edge.runtime.backends import register_remote
from skipgan_edge.runtime.backends.base import Backend


def _check_triton_url(url: str) -> Any:
    from skipgan_edge.service.triton_client import parse_url

    return parse_url(url)


def _open_triton(url: str) -> Backend:
    from skipgan_edge.service.triton_client import TritonBackend

    return TritonBackend(url)


register_remote("triton", _check_triton_url, _open_triton)
