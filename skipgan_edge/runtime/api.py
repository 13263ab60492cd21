"""Library entry point behind ``skipgan-edge run``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skipgan_edge.card import check_writable
from skipgan_edge.runtime.artifact import Artifact
from skipgan_edge.runtime.backends import BackendOptions, race_cpu_runtimes, race_needed
from skipgan_edge.runtime.pipeline import Pipeline, PipelineConfig
from skipgan_edge.runtime.sinks import DEFAULT_MAP_SCALE, CsvSink, ImageFolderSink, JsonlSink, ShowSink, Sink, VideoSink
from skipgan_edge.runtime.sources import SourceOptions, open_source


@dataclass(frozen=True)
class SinkOptions:
    jsonl: Path | None = None
    csv: Path | None = None
    save_video: Path | None = None
    save_images: Path | None = None
    show: bool = False
    summary: Path | None = None


def run(
    art: Artifact, source: str, *, backend: str = "auto", pipeline: PipelineConfig = PipelineConfig(),
    sinks: SinkOptions = SinkOptions(), source_opts: SourceOptions = SourceOptions(), options: BackendOptions = BackendOptions(),
    extra_sinks: Sequence[Callable[[], Sink]] = (),
) -> dict[str, Any]:
    """Open the artifact's backend and the source, stream every frame through, return the summary.

    The model is checked first, then the sinks and the source, so that each mistake is one line
    before anything runs. ``backend="auto"`` means what it means in every verb
    (:func:`skipgan_edge.runtime.backends.choose_backend`); when it has to time the CPU runtimes,
    ``run`` does it once everything opened, at this run's batch size, and streams with the faster
    one (the summary records both under ``backend_race_ms``, and the rule under ``backend_chosen_by``).

    ``extra_sinks`` are made once the model has opened, after the file sinks, and closed with them (the service
    wing's MQTT and Prometheus sinks come this way: :func:`skipgan_edge.service.api.run`)."""
    summary: dict[str, Any] = {}
    for target, what in ((sinks.summary, "--summary"), (source_opts.watch_state, "--watch-state"), (sinks.jsonl, "--jsonl"),
                         (sinks.csv, "--csv"), (sinks.save_video, "--save-video")):
        if target is not None and str(target) != "-":
            check_writable(Path(target), what)  # one line before the model is even loaded
    do_race = race_needed(art.kind, backend)
    be = art.open(backend, options, batch=max(1, pipeline.batch), race=False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(be)
        # the heatmap's colour scale, in the map's own units: the card's map_scale (1.5x the normal validation maps'
        # p99 peak); it used to come from the score statistics, which are not map units, and every frame was blue
        vmax = be.card.score.map_scale or DEFAULT_MAP_SCALE
        out: list[Sink] = []
        src = None
        race: dict[str, float] | None = None
        try:
            if sinks.jsonl:
                out.append(JsonlSink(sinks.jsonl))
            if sinks.csv:
                out.append(CsvSink(sinks.csv))
            if sinks.save_video:
                out.append(VideoSink(sinks.save_video, vmax=vmax))  # 25 fps unless the source says its rate (below)
            if sinks.save_images:
                out.append(ImageFolderSink(sinks.save_images, vmax=vmax))
            if sinks.show:
                out.append(ShowSink(vmax=vmax))
            for make in extra_sinks:
                out.append(make())
            src = open_source(source, source_opts)
            # the annotated video plays at the frames' rate: a replay's, a video file's own, a camera's asked --fps;
            # a rate a file misreports (0, 90000) leaves 25, which OpenCV's writer opens
            own = float(getattr(src, "fps", 0.0) or 0.0)
            rate = source_opts.replay_fps or own or source_opts.fps or 0.0
            for s in out:
                if isinstance(s, VideoSink) and 1.0 <= rate <= 240.0:
                    s.fps = rate
            if do_race:
                winner, race = race_cpu_runtimes(art.pair[1], max(1, pipeline.batch), options)
                if winner != be.name:
                    stack.close()  # the first choice's memory goes before the winner loads
                    be = stack.enter_context(art.open(winner, options, batch=max(1, pipeline.batch), race=False))
                be.chosen_by = {"rule": f"auto: faster CPU runtime on this model at batch {max(1, pipeline.batch)}", "race_ms": race}
        except BaseException:
            for s in out:
                s.close()
            if src is not None:
                src.close()
            raise
        pl = Pipeline(src, be, out, pipeline)
        if race is not None:
            pl.extra_summary["backend_race_ms"] = race
        if be.chosen_by is not None:
            pl.extra_summary["backend_chosen_by"] = be.chosen_by["rule"]
        summary = pl.run(sinks.summary)
    return summary
