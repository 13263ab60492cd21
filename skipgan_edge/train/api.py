"""Library entry points behind ``skipgan-edge train``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skipgan_edge.card import DIVERGED_NAME, ModelCard, check_writable_folder
from skipgan_edge.config import RunConfig, load_toml, merge
from skipgan_edge.data.datasets import Dataset, load_data
from skipgan_edge.errors import ConfigError, ModelFolderError, require

log = logging.getLogger(__name__)


def _resume_meta(run: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    from skipgan_edge.train.trainer import STATE_NAME

    path = run / STATE_NAME
    if (run / DIVERGED_NAME).exists():
        raise ModelFolderError(f"nothing to resume in {run}: its training diverged (see {run / DIVERGED_NAME}); "
                               "start a new run with a lower --lr or another --seed")
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
    from skipgan_edge.config import refuse_idle_bank_weight
    from skipgan_edge.model.networks import default_score
    from skipgan_edge.train.trainer import check_new_run, train

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
        batch_from: str | None = "the run's config"  # the batch the run started with (sized to the data then if it was)
    else:
        if out is None:
            raise ConfigError("--out is required: the run folder to create")
        file_cfg = load_toml(config) if config else {}
        data = data or file_cfg.pop("data", None)
        cfg_dict = merge(file_cfg, overrides)
        batch_from = ("--batch" if overrides.get("train", {}).get("batch") is not None
                      else f"train.batch in {config}" if file_cfg.get("train", {}).get("batch") is not None else None)
        weight_from = ("--bank-weight" if overrides.get("score", {}).get("bank_weight") is not None
                       else f"score.bank_weight in {config}")
        source_from = ("--bank-source" if overrides.get("score", {}).get("bank_source") is not None
                       else f"score.bank_source in {config}")
        kind_from = ("--bank-kind" if overrides.get("score", {}).get("bank_kind") is not None
                     else f"score.bank_kind in {config}")
    if not data:
        raise ConfigError("--data is required: an MVTec-style folder or fmnist:<class>")
    cfg = RunConfig.from_dict(cfg_dict)
    if resume is None:  # a bank option set for a run without a bank: one line, before the weight's range is checked
        from skipgan_edge.model.networks import ARCHITECTURES

        given = cfg_dict.get("score", {})
        size_from = ("--bank-size 0 or --paper" if overrides.get("score", {}).get("bank_size") is not None
                     else f"score.bank_size in {config}")
        # --arch auto trains every architecture: an option must hold for each candidate
        for arch in (list(ARCHITECTURES) if cfg.model.arch == AUTO else [cfg.model.arch]):
            bank_size, why = cfg.score.bank_size, size_from
            if bank_size is None:
                bank_size, why = int(default_score(arch).get("bank_size", 0)), f"{arch}'s default: no bank"
            refuse_idle_bank_weight(given.get("bank_weight"), bank_size, weight_from, "weight", why)
            refuse_idle_bank_weight(given.get("bank_source"), bank_size, source_from, "source", why)
            refuse_idle_bank_weight(given.get("bank_kind"), bank_size, kind_from, "kind", why)
        check_new_run(Path(out))  # one line now, not after the data is read
    if cfg.model.arch == AUTO:
        if resume is not None:
            raise ConfigError(f"--resume of an --arch auto run: resume its candidate instead (--resume {out}/candidates/ARCH), "
                              "then run --arch auto again with a new --out")
        from skipgan_edge.model.networks import ARCHITECTURES

        for arch in ARCHITECTURES:  # every candidate's config holds, before the first one trains
            with in_user_terms(overrides, config):
                dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)).validate(default_score(arch))
        check_writable_folder(Path(out), "--out")
        ds = _load(str(data), cfg)
        return train_auto(ds, size_batch(cfg, len(ds.train), batch_from), Path(out)), Path(out)
    # a resumed run takes its config from the run; --epochs is the one option it accepts
    given = overrides if resume is None else {"train": {"epochs": overrides.get("train", {}).get("epochs")}}
    with in_user_terms(given, config if resume is None else None):
        cfg = cfg.validate(default_score(cfg.model.arch))
    check_writable_folder(Path(out), "--out")  # one line now, not after the data is read
    ds = _load(str(data), cfg)
    return train(ds, size_batch(cfg, len(ds.train), batch_from), Path(out), resume=resume is not None), Path(out)


#: The options of ``train`` whose name is not the config key's (``score.mode`` is ``--score-mode``); every other key
#: ``a_b`` of the overrides is ``--a-b``.
TRAIN_OPTION = {"score.mode": "--score-mode"}


@contextlib.contextmanager
def in_user_terms(overrides: dict[str, dict[str, Any]], config: Path | None) -> Iterator[None]:
    """A :class:`ConfigError` about one value, raised inside, names where the user set it: the option they typed
    (``--bank-kind must be one of ...``), or the file before the key (``run.toml: score.bank_kind must be ...``).
    A value neither set (a default) keeps its key."""
    try:
        yield
    except ConfigError as exc:
        key, text = exc.key, str(exc)
        if key is None or "." not in key or not text.startswith(key):
            raise
        table, name = key.split(".", 1)
        if overrides.get(table, {}).get(name) is not None:
            text = TRAIN_OPTION.get(key, "--" + name.replace("_", "-")) + text[len(key):]
        elif config is not None:
            text = f"{config}: {text}"
        else:
            raise
        raise ConfigError(text, key=key) from None


def size_batch(cfg: RunConfig, n_train: int, batch_from: str | None) -> RunConfig:
    """The batch training runs with. A batch nobody set (``batch_from`` None: neither ``--batch`` nor the config file's
    ``train.batch``) larger than the ``n_train`` training images becomes ``n_train``, said in one line; the card's
    ``config.train.batch`` records the batch used. A batch that was set and is larger stays an error (``batch_from``
    names where it was set), as do fewer than 2 training images: every step trains on one full batch of at least 2
    (BatchNorm), and the last partial batch of an epoch is dropped."""
    batch = cfg.train.batch
    if n_train >= batch:
        return cfg
    if n_train < 2:
        raise ConfigError(f"{n_train} training image{'s' if n_train != 1 else ''}: training needs at least 2 "
                          "(BatchNorm trains on batches of 2 or more); add images")
    if batch_from is not None:
        raise ConfigError(f"batch {batch} ({batch_from}) is more than the {n_train} training images: "
                          f"set it to {n_train} or less, or leave it out to size the batch to the data")
    log.info("batch %d: the %d training images are fewer than the default batch of %d", n_train, n_train, batch)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch=n_train))


def _load(data: str, cfg: RunConfig) -> Dataset:
    """The dataset, and its statements on the console: how validation was taken, a resize the input size makes."""
    ds = load_data(data, cfg.model.isize, cfg.model.channels, cfg.train.val_fraction, cfg.train.seed)
    for line in ds.notes(cfg.model.isize):
        log.info("%s", line)
    return ds


AUTO = "auto"


def train_auto(ds: Any, cfg: RunConfig, out: Path) -> ModelCard:
    """``--arch auto``: train every architecture on the same data, budget and seed into ``OUT/candidates/ARCH``, keep the
    one with the better validation AUROC (on labelled validation anomalies, else on synthetic ones), and make ``OUT``
    that model; the card records every candidate's numbers under ``training.arch_auto``.

    Each architecture keeps its own score defaults (``model.networks.default_score``) unless the config sets them."""
    import dataclasses
    import hashlib
    import shutil

    from skipgan_edge.card import CARD_NAME, WEIGHTS_NAME, atomic_write_bytes, atomic_write_json, load_card, weights_with_card
    from skipgan_edge.model.networks import ARCHITECTURES, default_score
    from skipgan_edge.train.trainer import train

    if (out / CARD_NAME).exists() or (out / "candidates").exists():
        raise ConfigError(f"{out} already holds a run; choose another --out")
    signal = "val_auroc" if ds.val.has_anomalies else "val_synth_auroc"
    if signal == "val_synth_auroc" and not cfg.score.synthetic_val:
        raise ConfigError("--arch auto without labelled validation anomalies chooses on synthetic ones: drop --no-synthetic-val")
    found: dict[str, dict[str, Any]] = {}
    for arch in ARCHITECTURES:
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, arch=arch)).validate(default_score(arch))
        card = train(ds, c, out / "candidates" / arch)
        found[arch] = {"signal": signal, "value": card.metrics.get(signal), "best_epoch": card.training.best_epoch,
                       "val_loss": card.metrics.get("val_loss")}
    chosen = max(found, key=lambda a: found[a]["value"] if found[a]["value"] is not None else float("-inf"))
    src = out / "candidates" / chosen
    card = load_card(src)
    card = card.replace(training=dataclasses.replace(card.training, arch_auto={"chosen": chosen, "by": f"{signal} (max)",
                                                                              "candidates": found}))
    body = card.to_dict()
    body.pop("model_id", None)
    data = weights_with_card(src / WEIGHTS_NAME, json.dumps(body))
    atomic_write_bytes(out / WEIGHTS_NAME, data)
    atomic_write_json(out / CARD_NAME, card.replace(model_id=hashlib.sha256(data).hexdigest()[:16]).to_dict())
    shutil.copy(src / "metrics.jsonl", out / "metrics.jsonl")
    return load_card(out)
