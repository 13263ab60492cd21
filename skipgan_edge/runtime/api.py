"""Library entry point behind ``skipgan-edge run``."""

from __future__ import annotations

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
    cuda_api: str = "auto", threads: int = 0,
) -> dict[str, Any]:
    """Open the backend and the source, stream every frame through, return the summary.

    ``backend="auto"`` with an ONNX file on the CPU, where OpenVINO is installed beside ONNX
    Runtime: both are timed at this run's batch size first and the faster one streams (the summary
    records both timings under ``backend_race_ms``)."""
    src = open_source(source, source_opts)  # a bad source fails before any time goes into the model
    handed_over = False  # once the pipeline runs, it closes the source itself
    try:
        kw: dict[str, Any] = {}
        chosen = resolve_backend(kind, backend)
        race: dict[str, float] | None = None
        if backend == "auto" and kind == "onnx" and chosen == "openvino":
            chosen, race = race_cpu_runtimes(path, max(1, pipeline.batch), threads)
            backend = chosen
        if chosen == "tensorrt":
            kw["cuda_api"] = cuda_api
        if chosen in THREADED and threads:
            kw["threads"] = threads
        with open_backend(kind, path, backend, device=device, **kw) as be:
            # vmax for the heatmap colours: the normal validation maps' level at the threshold
            stats = be.card["score"]["val_stats"]
            vmax = max(float(stats["max"]) * 4.0, 1e-6)
            out: list[Sink] = []
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
            except BaseException:
                for s in out:
                    s.close()
                raise
            pl = Pipeline(src, be, out, pipeline)
            if race is not None:
                pl.extra_summary["backend_race_ms"] = race
            handed_over = True
            return pl.run(sinks.summary)
    finally:
        if not handed_over:
            src.close()
