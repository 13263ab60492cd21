"""Library entry points behind ``skipgan-edge train``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from skipgan_edge.card import ModelCard
from skipgan_edge.config import RunConfig, load_toml, merge
from skipgan_edge.data.datasets import load_data
from skipgan_edge.errors import ConfigError, ModelFolderError, require


def _resume_meta(run: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    from skipgan_edge.train.trainer import STATE_NAME

    path = run / STATE_NAME
    if not path.exists():
        raise ModelFolderError(f"nothing to resume in {run}: {STATE_NAME} does not exist")
    try:
        with safe_open(str(path), "pt") as fh:
            meta: dict[str, Any] = json.loads(fh.metadata()["state"])
    except (SafetensorError, OSError, KeyError) as exc:
        raise ModelFolderError(f"{path} is unreadable ({exc}); start a new run") from None
    return meta


def train_from_cli(
    data: str | None, out: Path | None, config: Path | None, resume: Path | None, overrides: dict[str, dict[str, Any]]
) -> tuple[ModelCard, Path]:
    """Resolve file config + CLI overrides, load the data, train; return the card and the run folder."""
    require("torch", "train", "skipgan-edge train")
    from skipgan_edge.model.networks import default_score
    from skipgan_edge.train.trainer import train

    if resume is not None:
        meta = _resume_meta(resume)
        base = meta["config"]
        data = data or meta.get("data_source")
        out = out or resume
        if Path(out).resolve() != Path(resume).resolve():
            raise ConfigError("--resume and --out name different folders; give only --resume RUN_DIR")
        given = {t: {k: v for k, v in vals.items() if v is not None} for t, vals in overrides.items()}
        given = {t: v for t, v in given.items() if v}
        changed = {f"{t}.{k}" for t, vals in given.items() for k, v in vals.items() if base.get(t, {}).get(k) != v}
        changed.discard("train.epochs")  # extending a finished run is allowed
        if changed:
            raise ConfigError(f"--resume keeps the run's config; these options differ from it: {', '.join(sorted(changed))}")
        cfg_dict = merge(base, {"train": {"epochs": overrides["train"].get("epochs")}})
    else:
        if out is None:
            raise ConfigError("--out is required: the run folder to create")
        file_cfg = load_toml(config) if config else {}
        data = data or file_cfg.pop("data", None)
        cfg_dict = merge(file_cfg, overrides)
    if not data:
        raise ConfigError("--data is required: an MVTec-style folder or fmnist:<class>")
    cfg = RunConfig.from_dict(cfg_dict)
    cfg = cfg.validate(default_score(cfg.model.arch))
    ds = load_data(str(data), cfg.model.isize, cfg.model.channels, cfg.train.val_fraction, cfg.train.seed)
    return train(ds, cfg, Path(out), resume=resume is not None), Path(out)
