"""Library entry point behind ``skipgan-edge run``."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipgan_edge.errors import ConfigError
from skipgan_edge.runtime.backends import THREADED, open_backend, race_cpu_runtimes, resolve_backend
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.sinks import CsvSink, ImageFolderSink, JsonlSink, ShowSink, Sink, VideoSink
from skipgan_edge.runtime.sources import SourceOptions, open_source


@dataclass(frozen=True)
class SinkOptions:
    jsonl: Path | None = None
    csv: Path | None = None
    save_video: Path | None = None
    save_images: Path | None = None
    show: bool = False
    summary: Path | None = None


def artifact(model: Path | None, onnx: Path | None, engine: Path | None) -> tuple[str, Path]:
    given = [(k, p) for k, p in (("model", model), ("onnx", onnx), ("engine", engine)) if p is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --model RUN_DIR, --onnx FILE or --engine FILE")
    return given[0][0], Path(given[0][1])


def run(
    kind: str, path: Path, source: str, *, backend: str = "auto", pipeline: PipelineConfig = PipelineConfig(),
    sinks: SinkOptions = SinkOptions(), source_opts: SourceOptions = SourceOptions(), device: str = "cpu",
    cuda_api: str = "auto", threads: int = 0, cuda_graphs: bool = True, pad_batch: bool = True,
) -> dict[str, Any]:
    """Open the backend and the source, stream every frame through, return the summary.

    The model is checked first, then the sinks and the source, so that each mistake is one line
    before anything runs. ``backend="auto"`` with an ONNX file on the CPU, where OpenVINO is
    installed beside ONNX Runtime: once everything opened, both runtimes are timed at this run's
    batch size and the faster one streams (the summary records both under ``backend_race_ms``)."""
    kw: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    chosen = resolve_backend(kind, backend)
    race_needed = backend == "auto" and kind == "onnx" and chosen == "openvino"
    if chosen == "tensorrt":
        kw.update(cuda_api=cuda_api, cuda_graphs=cuda_graphs, pad_to_profile=pad_batch)
    if chosen in THREADED and threads:
        kw["threads"] = threads
    be = open_backend(kind, path, chosen, device=device, **kw)
    with contextlib.ExitStack() as stack:
        stack.enter_context(be)
        # vmax for the heatmap colours: the normal validation maps' level at the threshold
        stats = be.card["score"]["val_stats"]
        vmax = max(float(stats["max"]) * 4.0, 1e-6)
        out: list[Sink] = []
        src = None
        race: dict[str, float] | None = None
        try:
            if sinks.jsonl:
                out.append(JsonlSink(sinks.jsonl))
            if sinks.csv:
                out.append(CsvSink(sinks.csv))
            if sinks.save_video:
                out.append(VideoSink(sinks.save_video, fps=source_opts.fps or 25.0, vmax=vmax))
            if sinks.save_images:
                out.append(ImageFolderSink(sinks.save_images, vmax=vmax))
            if sinks.show:
                out.append(ShowSink(vmax=vmax))
            src = open_source(source, source_opts)
            if race_needed:
                winner, race = race_cpu_runtimes(path, max(1, pipeline.batch), threads)
                if winner != be.name:
                    stack.close()  # the first choice's memory goes before the winner loads
                    be = stack.enter_context(open_backend(kind, path, winner, **kw))
        except BaseException:
            for s in out:
                s.close()
            if src is not None:
                src.close()
            raise
        pl = Pipeline(src, be, out, pipeline)
        if race is not None:
            pl.extra_summary["backend_race_ms"] = race
        summary = pl.run(sinks.summary)
    return summary
