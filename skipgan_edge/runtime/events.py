"""Alarm events: consecutive anomalous frames of one camera grouped into one event, with a debounce.

A defect passes the camera in several consecutive frames, and a line thinks in events (and false alarms per
hour), not in frames. With ``debounce`` K (``run --debounce K``, a camera's ``debounce`` key in ``serve``):

* an event **opens** on the K-th consecutive anomalous frame; it starts at the first of those K frames;
* it **closes** on the K-th consecutive normal frame after it; it ends at its last anomalous frame;
* K = 1 (the default): every run of consecutive anomalous frames is one event.

A record carries ``event``: the id of the event open when it was scored, else null. That is the frame that
opened it, every frame after it up to (not including) the frame that closed it (normal frames of a gap shorter
than K included). The K − 1 anomalous frames before the opening one carry null: a record is written as soon as
it is scored and never held back for the verdict of later frames; the event's messages name its ``first_frame``.
Ids count from 1 per camera and run.

Each event gives two messages (the MQTT sink publishes them on ``PREFIX/CAMERA/events``): ``start`` when it opens
and ``end`` when it closes, or when the run ends with it open (``closed_by: "end of run"``). ``end`` carries the
frames from the first to the last anomalous frame (scored frames of this camera, gaps included), how many of them
were anomalous, the peak normalized score, its frame and where it was, and the duration (capture time of the last
anomalous frame minus the first's; 0 for a one-frame event; a video file read as fast as it decodes compresses
it, so ``frames`` is the measure there).
"""

from __future__ import annotations

from typing import Any

EVENT_SCHEMA = 1


class EventTracker:
    """One camera's events. ``update`` takes each record in frame order, sets its ``event`` and returns the messages
    (start, end) that record caused; ``finish`` closes an open event at the end of a run."""

    def __init__(self, camera: str, debounce: int = 1) -> None:
        if debounce < 1:
            raise ValueError(f"debounce must be at least 1, got {debounce}")
        self.camera, self.debounce = camera, int(debounce)
        self.count = 0  # events opened
        self.run_anom: list[dict[str, Any]] = []  # the consecutive anomalous records while no event is open (at most K)
        self.normal_run = 0  # consecutive normal frames while an event is open
        self.open: dict[str, Any] | None = None  # the open event's state

    def update(self, rec: dict[str, Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        anomalous = bool(rec["anomalous"])
        ev = self.open
        if ev is None:
            if not anomalous:
                self.run_anom.clear()
                rec["event"] = None
                return out
            self.run_anom.append(rec)
            if len(self.run_anom) < self.debounce:
                rec["event"] = None
                return out
            ev = self._open(rec)
            out.append(self._start_message(ev))
        else:
            ev["frames_seen"] += 1
            if anomalous:
                self.normal_run = 0
                self._extend(ev, rec)
            else:
                self.normal_run += 1
                if self.normal_run >= self.debounce:
                    out.append(self._close(rec, "normal frames"))
                    rec["event"] = None
                    return out
        rec["event"] = ev["id"]
        return out

    def finish(self) -> list[dict[str, Any]]:
        """The end message of the event still open (``closed_by: "end of run"``), if any."""
        return [] if self.open is None else [self._close(None, "end of run")]

    # ------------------------------------------------------------------------------------------------ state
    def _open(self, rec: dict[str, Any]) -> dict[str, Any]:
        self.count += 1
        first = self.run_anom[0]
        ev: dict[str, Any] = {"id": self.count, "first": first, "opened": rec, "last": first, "peak": first, "frames_seen": 0, "anomalous": 0,
              "frames_to_last": 0}
        for r in self.run_anom:  # the K frames that opened it
            ev["frames_seen"] += 1
            self._extend(ev, r)
        self.run_anom = []
        self.normal_run = 0
        self.open = ev
        return ev

    @staticmethod
    def _extend(ev: dict[str, Any], rec: dict[str, Any]) -> None:
        ev["anomalous"] += 1
        ev["last"] = rec
        ev["frames_to_last"] = ev["frames_seen"]  # frames from the first anomalous one to this one, inclusive
        if rec["normalized_score"] > ev["peak"]["normalized_score"]:
            ev["peak"] = rec

    def _close(self, rec: dict[str, Any] | None, why: str) -> dict[str, Any]:
        ev = self.open
        assert ev is not None
        self.open, self.normal_run = None, 0
        first, last, peak = ev["first"], ev["last"], ev["peak"]
        return {**self._common(ev), "type": "end", "last_frame": last["frame"], "end_time": last["time"],
                "frames": ev["frames_to_last"], "anomalous_frames": ev["anomalous"],
                "duration_s": round(max(0.0, float(last["timestamp"]) - float(first["timestamp"])), 6),
                "peak_normalized_score": peak["normalized_score"], "peak_score": peak["score"], "peak_frame": peak["frame"],
                "peak_where": peak.get("where"), "closed_by": why, "closed_frame": None if rec is None else rec["frame"]}

    def _start_message(self, ev: dict[str, Any]) -> dict[str, Any]:
        return {**self._common(ev), "type": "start", "opened_frame": ev["opened"]["frame"]}

    def _common(self, ev: dict[str, Any]) -> dict[str, Any]:
        first = ev["first"]
        return {"schema": EVENT_SCHEMA, "camera": self.camera, "event": ev["id"], "source": first["source"],
                "model_id": first.get("model_id"), "threshold": first["threshold"], "debounce": self.debounce,
                "first_frame": first["frame"], "start_time": first["time"], "timestamp": first["timestamp"]}
