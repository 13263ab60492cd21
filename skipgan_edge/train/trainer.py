"""The Skip-GANomaly training loop: GAN updates, validation, best checkpoint, resume.

What differs from the authors' code, and why (each is listed in DESIGN.md as a defect):

* No noise is added to the generator input (theirs adds an uninitialised tensor).
* The discriminator does not minimise the latent loss (theirs does, through a graph torch 2
  rejects); its objective is the paper's BCE on real and fake.
* Validation and scoring run in eval mode (BatchNorm running statistics), so a score never
  depends on which other images share its batch.
* Model selection and the threshold use a held-out validation split of the training data
  (normal images, plus labelled anomalies if the dataset has a ``val/`` folder with them); test
  data is only read by ``eval``.

The best checkpoint: with labelled validation anomalies, the epoch of highest validation AUROC;
without, the epoch of lowest validation generator loss w_con·L1 + w_lat·L2 on normal images
(the paper's non-adversarial objective on data the generator did not train on). A tie on AUROC
(it saturates: 1.0 from the first epoch on easy data) goes to the lower validation loss, so the
selection does not stop at the first saturated epoch. The card's ``training.epochs_run`` is the
number of epochs the run completed (the card is rewritten when the run ends).

Non-finite values: a run that cannot go silently wrong. The losses take logits
(``model/losses.py``: finite, with finite gradients, for every finite logit, in fp32 and under
bf16/fp16 autocast, whose BCE is computed in float32). Every step checks both losses and both
networks' gradients before the optimizer steps, and the updated weights and BatchNorm statistics
after; every epoch checks its validation scores, every checkpoint its weights. A non-finite value
raises :class:`NonFinite` at the step it appears, before any checkpoint or best model is written
from it. The trainer then recovers:

1. it restores the last checkpoint (written at the start of the run and at the end of every
   epoch, never from non-finite weights): both networks, both optimizers, the RNG, the epoch;
2. it multiplies both learning rates by ``train.recover_lr_factor`` (default 0.5) for the rest of
   the run (restarting at the same rate with the same RNG would diverge at the same step);
3. it records the recovery (epoch, step, what was non-finite, where it restarted, the new rate)
   in the card's ``training.recoveries``, the log and the metrics row of the epoch (``recovered``).

After ``train.max_recoveries`` recoveries (default 3; 0 stops at the first non-finite value) the
next one ends the run: the best model so far and the checkpoint are deleted (a run that diverged
is not a model to ship), ``RUN/diverged.json`` records what happened, and :class:`TrainingDiverged`
is raised: one line on stderr and exit code 3 from ``skipgan-edge train``. ``load_card`` and
``--resume`` on that folder say it diverged. The discriminator's collapse is handled as the paper
does, separately: re-initialised when its loss falls below ``train.d_reinit_below``.

Checkpointing: ``RUN/checkpoint/state.safetensors`` holds everything needed to resume (both
networks, both optimizers, the torch RNG, epoch, step, partial sums) and is written atomically
at the end of every epoch and when the run is interrupted (Ctrl-C or SIGTERM, between steps).
A SIGKILL loses at most the epoch in progress. Epoch ``e`` shuffles with
``numpy.random.default_rng([seed, e])``, so a resumed run sees exactly the batches an
uninterrupted one would, and ends with the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch

from skipgan_edge import FORMAT_VERSION
from skipgan_edge.card import (
    CARD_NAME,
    DIVERGED_NAME,
    WEIGHTS_NAME,
    ModelCard,
    Recovery,
    ScoreSpec,
    Threshold,
    Training,
    ValStats,
    atomic_write_bytes,
    atomic_write_json,
    build_card,
    load_card,
    weights_with_card,
)
from skipgan_edge.config import RunConfig
from skipgan_edge.data.datasets import Dataset
from skipgan_edge.data.progress import Progress
from skipgan_edge.data.synthval import SyntheticDefects, make_defects
from skipgan_edge.errors import ConfigError, ModelFolderError, SkipganError
from skipgan_edge.metrics import auroc, f1_at
from skipgan_edge.model.bank import (
    BANK_KEY,
    bank_info,
    bank_term,
    fit_gaussian,
    gaussian_image_features,
    gaussian_info,
    head_constants,
    patch_features,
    subsample,
)
from skipgan_edge.model.networks import build_model, default_score, head_record, init_weights
from skipgan_edge.model.scorer import combine, score_terms, to_model_input
from skipgan_edge.thresholds import apply_policy, min_normal_images, parse_policy, resolve

log = logging.getLogger(__name__)

STATE_NAME = "checkpoint/state.safetensors"


class Interrupted(SkipganError):
    """Raised after a resumable checkpoint was saved on SIGINT/SIGTERM; exit code 128 + signal."""

    prefix = "interrupted"

    def __init__(self, signum: int, path: Path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name} received; checkpoint saved; resume with: skipgan-edge train --resume {path.parent.parent}")
        self.signum = signum
        self.exit_code = 128 + signum


class NonFinite(SkipganError):
    """A loss, gradient, weight or validation score that is ``nan`` or ``inf``; ``epoch`` and ``step`` (1-based; step 0
    is the epoch's validation) say where. The trainer recovers from it (see the module docstring)."""

    def __init__(self, what: str, epoch: int = 0, step: int = 0) -> None:
        super().__init__(f"non-finite {what}")
        self.what, self.epoch, self.step = what, epoch, step

    def where(self) -> str:
        return f"epoch {self.epoch} " + (f"step {self.step}" if self.step else "validation")


class TrainingDiverged(SkipganError):
    """The run met a non-finite value after ``train.max_recoveries`` recoveries; no model was kept. Exit code 3."""

    exit_code = 3


def _finite(tensors: Any) -> bool:
    """Whether the sum of every floating-point tensor's elements is finite (one device sync): false when any element is
    ``nan`` or ``inf``, and when finite values add up past float32's range (~3e38), which only a diverging run reaches.
    A sum costs ~1.6 % of a default training step on one CPU core; ``isfinite`` on every element cost ~20 %."""
    sums = [t.detach().sum(dtype=torch.float32) for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.isfinite(torch.stack(sums).sum())) if sums else True


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def _set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "amp":
        if device.type != "cuda":
            raise ConfigError("--precision amp needs a CUDA device; on CPU use bf16")
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def score_split(net: torch.nn.Module, images: np.ndarray, device: torch.device, pool: int = 0, batch: int = 256,
                keep_maps: bool = False, bank: torch.Tensor | None = None, bank_source: str = "discriminator",
                bank_kind: str = "nearest") -> dict[str, np.ndarray]:
    """Eval-mode reconstruction term, latent term and mean |x - G(x)| for a uint8 NHWC array (and the anomaly maps);
    with a feature ``bank`` (a ``bank_kind`` bank of ``bank_source`` features), the bank term as ``"bank"``
    (model/bank.py)."""
    was_training = net.training
    net.eval()
    rec, lat, l1s, peaks, maps, banks = [], [], [], [], [], []
    consts = head_constants(bank.to(device), bank_kind) if bank is not None else None
    for i in range(0, len(images), batch):
        x = to_model_input(torch.from_numpy(images[i : i + batch]).to(device))
        fake, f_real, f_fake = net.terms(x)  # type: ignore[operator]
        r, la, amap = score_terms(x, fake, f_real, f_fake, pool)
        rec.append(r.cpu().numpy())
        lat.append(la.cpu().numpy())
        l1s.append((x - fake).abs().mean(dim=(1, 2, 3)).cpu().numpy())
        peaks.append(amap.amax(dim=(1, 2, 3)).float().cpu().numpy())
        if keep_maps:
            maps.append(amap[:, 0].float().cpu().numpy())
        if consts is not None:
            banks.append(bank_term(net, f_real.float(), bank_kind, bank_source, consts).float().cpu().numpy())
    net.train(was_training)
    out = {"rec": np.concatenate(rec), "lat": np.concatenate(lat), "l1": np.concatenate(l1s), "map_peak": np.concatenate(peaks)}
    if keep_maps:
        out["maps"] = np.concatenate(maps)
    if consts is not None:
        out["bank"] = np.concatenate(banks)
    return out


def build_bank(net: torch.nn.Module, images: np.ndarray, cfg: RunConfig, device: torch.device,
               said: set[str] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The feature bank of ``net`` on the training ``images`` and the card's record of it. ``gaussian``: fitted on at
    most score.bank_size images' maps (a seeded random choice when there are more). ``nearest``: score.bank_size
    patch features (score.bank_subsample); fewer patch features than the size asked are all kept, said in one
    console line (once per run: ``said`` holds the lines already said)."""
    sc = cfg.score
    source = str(sc.bank_source)
    if sc.bank_kind == "gaussian":
        g = gaussian_image_features(net, images, device)
        available, method = len(g), "all"
        if len(g) < 2:
            raise ConfigError(f"a gaussian bank is fitted on at least 2 training images, and there are {len(g)}: add normal "
                              "images, or train with --bank-size 0")
        if len(g) > int(sc.bank_size or 0):
            g, method = subsample(g, int(sc.bank_size or 0), "random", cfg.train.seed), "random"
        gauss = fit_gaussian(g)
        return gauss, {**gaussian_info(gauss, method, len(g), available), "weight": float(sc.bank_weight)}
    feats = patch_features(net, images, device, source)
    if len(feats) < int(sc.bank_size or 0):
        _say_once(said, logging.WARNING, f"feature bank: the {len(images)} training images give {len(feats)} patch features, "
                  f"fewer than score.bank_size {sc.bank_size}: all {len(feats)} are kept (add images for a larger bank)")
    bank = subsample(feats, int(sc.bank_size or 0), sc.bank_subsample, cfg.train.seed)  # all of them when there are fewer
    patches = len(feats) // max(len(images), 1)
    return bank, {**bank_info(bank, patches, sc.bank_subsample, len(feats), source), "weight": float(sc.bank_weight)}


def _say_once(said: set[str] | None, level: int, line: str) -> None:
    """Log ``line`` unless ``said`` (the lines a run has said; None: no memory) already holds it."""
    if said is not None:
        if line in said:
            return
        said.add(line)
    log.log(level, "%s", line)


def validation_report(
    net: torch.nn.Module, data: Dataset, cfg: RunConfig, device: torch.device, synthetic: SyntheticDefects | None = None,
    said: set[str] | None = None,
) -> dict[str, Any]:
    """Scores of the validation split, their statistics, the threshold and the selection signal.

    ``cfg`` is a validated config (``RunConfig.validate``): the score's mode, λ and pool are filled in.
    ``synthetic``: anomalous copies of the normal validation images (``data.synthval``), used when the data has
    no labelled validation anomalies, for the threshold policy's recall and the synthetic-validation AUROC."""
    sc = cfg.score
    mode, pool = str(sc.mode), int(sc.pool or 0)
    bank, bank_rec = build_bank(net, data.train.images, cfg, device, said) if (sc.bank_size or 0) > 0 else (None, None)
    if bank is not None and not bool(torch.isfinite(bank).all()):
        raise NonFinite("feature bank")
    w_bank = float(sc.bank_weight) if bank is not None else 0.0
    terms = score_split(net, data.val.images, device, pool, bank=bank, bank_source=str(sc.bank_source), bank_kind=str(sc.bank_kind))
    if not all(np.isfinite(v).all() for v in terms.values()):
        raise NonFinite("validation scores")
    is_normal = data.val.labels == 0
    term_stats = {
        "rec_mean": float(terms["rec"][is_normal].mean()), "rec_std": float(terms["rec"][is_normal].std()),
        "lat_mean": float(terms["lat"][is_normal].mean()), "lat_std": float(terms["lat"][is_normal].std()),
    }
    if bank is not None:
        term_stats.update({"bank_mean": float(terms["bank"][is_normal].mean()), "bank_std": float(terms["bank"][is_normal].std())})
    lam = float(sc.lam or 0.0)
    lam_method = "configured"
    if sc.select_lam and data.val.has_anomalies:
        grid = [i / 10 for i in range(11)]
        aucs = [auroc(data.val.labels, combine(terms["rec"], terms["lat"], mode, g, term_stats, terms.get("bank"), w_bank)) for g in grid]
        lam, lam_method = grid[int(np.argmax(aucs))], "best validation AUROC over 0, 0.1, ..., 1"
    score = combine(terms["rec"], terms["lat"], mode, lam, term_stats, terms.get("bank"), w_bank)
    normal = score[is_normal]
    smin, smax = float(normal.min()), float(normal.max())
    span = smax - smin if smax > smin else 1.0
    rep: dict[str, Any] = {
        "val_stats": {
            "min": smin, "max": smax, "mean": float(normal.mean()), "std": float(normal.std()), "n": len(normal),
        },
        "term_stats": term_stats, "lam": float(lam), "lam_method": lam_method,
        # the heatmap's colour scale: 1.5x the 99th percentile of the normal validation maps' peaks, so a normal
        # image stays blue to green and a defect, whose map is far above anything normal, saturates to red
        "map_scale": float(np.quantile(terms["map_peak"][is_normal], 0.99)) * 1.5,
    }
    if bank is not None:
        rep["bank"], rep["bank_info"] = bank, bank_rec
    # the generator's non-adversarial objective on the held-out normal images
    rep["val_loss"] = float(cfg.train.w_con * terms["l1"][is_normal].mean() + cfg.train.w_lat * terms["lat"][is_normal].mean())
    anomalous, source = None, None
    if data.val.has_anomalies:
        anomalous, source = score[~is_normal], "labelled"
        rep["val_auroc"] = auroc(data.val.labels, score)
        rep["signal"] = ("val_auroc", rep["val_auroc"], "max")
    else:
        if synthetic is not None and len(synthetic.images):
            syn = score_split(net, synthetic.images, device, pool, keep_maps=True, bank=bank, bank_source=str(sc.bank_source),
                              bank_kind=str(sc.bank_kind))
            if not all(np.isfinite(v).all() for v in syn.values()):
                raise NonFinite("synthetic validation scores")
            anomalous, source = np.asarray(combine(syn["rec"], syn["lat"], mode, lam, term_stats, syn.get("bank"), w_bank)), "synthetic"
            rep["val_synth_auroc"] = auroc(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous])
            # the masks were kept: how well the anomaly map localises the synthetic defects
            rep["val_synth_pixel_auroc"] = auroc(synthetic.masks.reshape(-1), syn["maps"].reshape(-1))
        rep["signal"] = ("val_loss", rep["val_loss"], "min")
    policy = resolve(sc.threshold, data.val.has_anomalies)
    if policy == "f1" and anomalous is None:
        _say_once(said, logging.WARNING,
                  "--threshold f1 needs validation anomalies and there are none (synthetic validation is off): using max-normal")
        policy = "max-normal"
    try:
        choice = apply_policy(policy, normal, anomalous, source)
    except ConfigError as exc:  # too few validation images for the promised rate: say so, fall back to the strictest
        _, q = parse_policy(policy)
        if sc.threshold.strip().lower() == "auto" and q is not None:  # a rate the user never gave: say who chose it
            line = (f"{len(normal)} normal validation image(s) cannot set the auto policy's false-alarm rate of {q:g} (its "
                    f"choice without labelled validation anomalies): need at least {min_normal_images(q)}; the threshold "
                    "falls back to max-normal (add normal images, or choose a policy with --threshold)")
        else:
            line = f"{exc}; the threshold falls back to max-normal"
        _say_once(said, logging.WARNING, line)
        choice = apply_policy("max-normal", normal, anomalous, source)
    rep["threshold"] = {
        "normalized": (choice.raw - smin) / span, "raw": choice.raw,
        "method": f"{choice.policy} on {len(normal)} normal validation images"
                  + (f" and {len(anomalous)} {source} anomalies" if anomalous is not None else ""),
        "policy": choice.policy, "expected_fpr": choice.expected_fpr, "fpr_interval": list(choice.fpr_interval),
        "expected_recall": choice.expected_recall, "recall_source": choice.recall_source, "n_normal": choice.n_normal,
    }
    if anomalous is not None:
        rep["threshold"]["val_f1"] = f1_at(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous],
                                           float(np.nextafter(choice.raw, np.inf)))
    return rep


def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.state.{pid}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def _restore_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if not key.startswith(prefix + ".state."):
            continue
        _, _, pid, name = key.split(".", 3)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def check_new_run(out: Path) -> None:
    """One line if ``out`` already holds a run (a checkpoint, a model card or a diverged run's record)."""
    if any((Path(out) / name).exists() for name in (STATE_NAME, CARD_NAME, DIVERGED_NAME)) or (Path(out) / "candidates").exists():
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")


class Trainer:
    """Trains one model into a run folder. ``fit()`` returns the model card.

    Non-finite values are detected at the step they appear and recovered from a bounded number of times (restore the
    last checkpoint, lower both learning rates, record it in the card), then the run stops with
    :class:`TrainingDiverged` and keeps no model: the module docstring states the policy."""

    def __init__(
        self, data: Dataset, cfg: RunConfig, out: Path, *, progress: bool = True,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.data = data
        self.cfg = cfg.validate(default_score(cfg.model.arch))
        self.out = Path(out)
        self.progress = progress
        self.on_epoch = on_epoch
        self.synthetic: SyntheticDefects | None = None
        if not data.val.has_anomalies and self.cfg.score.synthetic_val and len(data.val) >= 2:
            self.synthetic = make_defects(data.val.images, cfg.train.seed)
        self.device = select_device(cfg.train.device)
        self._stop_signal: int | None = None
        self.net: Any = None  # the architecture's module with .generator and .discriminator
        self.recoveries: list[Recovery] = []
        self.ema: Any = None  # the generator's exponential moving average (train.ema_decay > 0), what is validated and shipped
        self.ema_updates = 0
        self.said: set[str] = set()  # the console lines said once per run (validation_report), not once per epoch
        if len(data.train) < cfg.train.batch:
            raise ConfigError(
                f"{len(data.train)} training images is fewer than one batch ({cfg.train.batch}); lower --batch or add images"
            )

    # -- signals ---------------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    # -- state -----------------------------------------------------------------------------
    def _save_state(self, epoch: int, step: int, partial: dict[str, float], history: list[dict[str, Any]], best: dict[str, Any]) -> Path:
        """The resumable checkpoint, and the restore point of a recovery: never written from non-finite weights."""
        from safetensors.torch import save

        state = self.net.state_dict()
        if not _finite(state.values()):
            raise NonFinite("weights", epoch + 1 if step else epoch, step)
        tensors: dict[str, torch.Tensor] = {}
        for k, v in state.items():
            tensors[f"net.{k}"] = v.detach().cpu().contiguous()
        t_g, m_g = _flatten_optimizer("opt_g", self.opt_g)
        t_d, m_d = _flatten_optimizer("opt_d", self.opt_d)
        tensors.update(t_g)
        tensors.update(t_d)
        if self.ema is not None:
            for k, v in self.ema.state_dict().items():
                tensors[f"ema.{k}"] = v.detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "ema_updates": self.ema_updates,
            "epoch": epoch, "step": step, "partial": partial, "history": history, "best": best,
            "opt_g": m_g, "opt_d": m_d, "config": self.cfg.to_dict(),
            "data_fingerprint": self.data.fingerprint, "data_source": self.data.name,
            "format_version": FORMAT_VERSION, "recoveries": [dataclasses.asdict(r) for r in self.recoveries],
        }
        path = self.out / STATE_NAME
        atomic_write_bytes(path, save(tensors, metadata={"state": json.dumps(meta)}))
        return path

    def _load_state(self) -> dict[str, Any]:
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = self.out / STATE_NAME
        if not path.exists():
            raise ModelFolderError(f"nothing to resume: {path} does not exist; start without --resume")
        with safe_open(str(path), "pt") as fh:
            meta: dict[str, Any] = json.loads(fh.metadata()["state"])
        if meta["data_fingerprint"] != self.data.fingerprint:
            raise ConfigError(
                f"--resume: the training data differs from the data {self.out} was started on; use the same --data, or a new --out"
            )
        tensors = load_file(str(path))
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        _restore_optimizer("opt_g", self.opt_g, tensors, meta["opt_g"])
        _restore_optimizer("opt_d", self.opt_d, tensors, meta["opt_d"])
        torch.set_rng_state(tensors["rng.torch"])
        if self.ema is not None:
            ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
            self.ema.load_state_dict(ema if ema else self.net.generator.state_dict())
            self.ema_updates = int(meta.get("ema_updates", 0))
        return meta

    def _write_best(self, card: ModelCard, bank: torch.Tensor | None = None) -> None:
        """Weights (and the feature bank) with the card embedded (one atomic rename), then the readable model.json copy."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        if bank is not None:
            state[BANK_KEY] = bank.detach().float().cpu().contiguous()
        data = save(state, metadata={"card": json.dumps(card.to_dict())})
        atomic_write_bytes(self.out / WEIGHTS_NAME, data)
        atomic_write_json(self.out / CARD_NAME, card.replace(model_id=hashlib.sha256(data).hexdigest()[:16]).to_dict())

    def _finish_card(self, history: list[dict[str, Any]]) -> ModelCard:
        """The best model's card with what only the end of the run knows: the epochs run and every recovery."""
        card = load_card(self.out)
        training = dataclasses.replace(card.training, epochs_run=int(history[-1]["epoch"]) if history else 0,
                                       recoveries=list(self.recoveries))
        if training == card.training:
            return card
        body = card.replace(training=training, model_id=None).to_dict()
        data = weights_with_card(self.out / WEIGHTS_NAME, json.dumps(body))  # the tensors are untouched
        atomic_write_bytes(self.out / WEIGHTS_NAME, data)
        atomic_write_json(self.out / CARD_NAME, {**body, "model_id": hashlib.sha256(data).hexdigest()[:16]})
        return load_card(self.out)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> ModelCard:
        tc = self.cfg.train
        _set_determinism(tc.seed)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.net = build_model(self.cfg.model).to(self.device)
        self.net.train()
        g, d = self.net.generator, self.net.discriminator
        if tc.ema_decay > 0:
            self.ema = copy.deepcopy(g).requires_grad_(False)
            self.ema_updates = 0
        self.opt_g = torch.optim.Adam(g.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        self.opt_d = torch.optim.Adam(d.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        start_epoch, start_step = 0, 0
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"value": None, "epoch": None}
        partial: dict[str, float] = {}
        if resume:
            meta = self._load_state()
            start_epoch, start_step, history, best, partial = meta["epoch"], meta["step"], meta["history"], meta["best"], meta["partial"]
            self.recoveries = [Recovery(**r) for r in meta.get("recoveries", [])]
            log.info("resuming %s at epoch %d step %d", self.out, start_epoch + 1, start_step)
        else:
            check_new_run(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        if not resume and metrics_path.exists():
            metrics_path.unlink()
        if resume:  # the checkpoint's history is the authority: a row written after the last checkpoint is not repeated
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode())
        else:
            self._save_state(0, 0, {}, history, best)  # the first restore point

        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        t_start = time.perf_counter()
        try:
            while True:
                try:
                    self._epochs(start_epoch, start_step, partial, history, best, metrics_path)
                    break
                except NonFinite as exc:
                    start_epoch, start_step, history, best, partial = self._recover(exc)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        log.info("trained to epoch %d in %.1f s%s", len(history), time.perf_counter() - t_start,
                 f" after {len(self.recoveries)} recover{'y' if len(self.recoveries) == 1 else 'ies'}" if self.recoveries else "")
        return self._finish_card(history)

    def _epochs(self, start_epoch: int, start_step: int, partial: dict[str, float], history: list[dict[str, Any]],
                best: dict[str, Any], metrics_path: Path) -> None:
        """Epochs ``start_epoch``.. (from step ``start_step`` of the first); raises NonFinite where a value is not finite."""
        tc = self.cfg.train
        train_u8 = torch.from_numpy(self.data.train.images)  # (N, H, W, C) uint8, stays on the host
        n = len(train_u8)
        steps = n // tc.batch  # drop the last partial batch: BatchNorm statistics of 1-3 images are noise
        for epoch in range(start_epoch, tc.epochs):
            perm = torch.from_numpy(np.random.default_rng([tc.seed, epoch]).permutation(n))
            sums = dict(partial) if epoch == start_epoch else {}
            first = start_step if epoch == start_epoch else 0
            bar = self._bar(epoch, steps, first)
            t0 = time.perf_counter()
            imgs = 0
            try:
                for step in range(first, steps):
                    idx = perm[step * tc.batch : (step + 1) * tc.batch]
                    try:
                        losses = self._step(train_u8[idx])
                    except NonFinite as exc:
                        exc.epoch, exc.step = epoch + 1, step + 1
                        raise
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    sums["_n"] = sums.get("_n", 0.0) + 1
                    imgs += tc.batch
                    if bar is not None:
                        rate = imgs / max(1e-9, time.perf_counter() - t0)
                        bar.update(1, f"g {losses['g']:.3f}  d {losses['d']:.3f}  {rate:.0f} img/s")
                    if self._stop_signal is not None:
                        if bar is not None:
                            bar.close()
                            bar = None
                        path = self._save_state(epoch, step + 1, sums, history, best)
                        raise Interrupted(self._stop_signal, path)
            finally:
                if bar is not None:
                    bar.close()
            seconds = time.perf_counter() - t0
            try:
                rec = self._end_epoch(epoch, sums, seconds, imgs, best, history)
            except NonFinite as exc:
                exc.epoch, exc.step = epoch + 1, 0
                raise
            history.append(rec)
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
            self._save_state(epoch + 1, 0, {}, history, best)
            if self.on_epoch:
                self.on_epoch(rec)
            if self._stop_signal is not None:
                raise Interrupted(self._stop_signal, self.out / STATE_NAME)

    def _recover(self, exc: NonFinite) -> tuple[int, int, list[dict[str, Any]], dict[str, Any], dict[str, float]]:
        """Restore the last checkpoint with lower learning rates and record it, or give up (TrainingDiverged)."""
        tc = self.cfg.train
        n = len(self.recoveries)
        if n >= tc.max_recoveries:
            self._abandon(exc)
        meta = self._load_state()  # never written from non-finite weights (_save_state checks)
        lr = tc.lr * tc.recover_lr_factor ** (n + 1)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        epoch, step = int(meta["epoch"]), int(meta["step"])
        restored = "the start" if epoch == 0 and step == 0 else f"epoch {epoch + 1} step {step}" if step else f"the end of epoch {epoch}"
        self.recoveries.append(Recovery(epoch=exc.epoch, step=exc.step, what=exc.what, restored=restored, lr=lr))
        log.warning("non-finite %s at %s: restored %s, learning rate now %g (recovery %d of at most %d)",
                    exc.what, exc.where(), restored, lr, n + 1, tc.max_recoveries)
        return epoch, step, meta["history"], meta["best"], meta["partial"]

    def _abandon(self, exc: NonFinite) -> None:
        """No model from a run that diverged: delete the best model and the checkpoint, leave diverged.json, raise."""
        tc = self.cfg.train
        lr = float(self.opt_g.param_groups[0]["lr"])
        tried = (f"after {len(self.recoveries)} recover{'y' if len(self.recoveries) == 1 else 'ies'} (the last at learning rate {lr:g})"
                 if self.recoveries else f"with recovery off (max_recoveries 0, learning rate {lr:g})")
        message = (f"training diverged: non-finite {exc.what} at {exc.where()} {tried}; no model was kept ({self.out / DIVERGED_NAME}); "
                   f"train again with a lower --lr than {tc.lr:g} or another --seed")
        for name in (WEIGHTS_NAME, CARD_NAME, STATE_NAME):
            (self.out / name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.out / STATE_NAME).parent.rmdir()
        atomic_write_json(self.out / DIVERGED_NAME, {
            "what": exc.what, "epoch": exc.epoch, "step": exc.step, "lr": lr, "max_recoveries": tc.max_recoveries,
            "recoveries": [dataclasses.asdict(r) for r in self.recoveries], "message": message,
        })
        raise TrainingDiverged(message)

    def _bar(self, epoch: int, steps: int, first: int) -> Progress | None:
        """The epoch's progress (skipgan_edge.data.progress): a bar on a terminal, a line every few seconds in a log."""
        if not self.progress:
            return None
        return Progress(f"epoch {epoch + 1}/{self.cfg.train.epochs}", steps, "steps", done=first)

    def _step(self, batch_u8: torch.Tensor) -> dict[str, float]:
        """One generator and one discriminator update; NonFinite, before the optimizer steps, on a non-finite loss or gradient."""
        tc = self.cfg.train
        x = to_model_input(batch_u8.to(self.device, non_blocking=True))  # (B, C, H, W)
        weights = (tc.w_adv, tc.w_con, tc.w_lat)
        g, d = self.net.generator, self.net.discriminator
        # generator update (the architecture defines its losses: model/networks.py)
        x_in = x + tc.input_noise * torch.randn_like(x) if tc.input_noise > 0 else None
        with _autocast(self.device, tc.precision):
            loss_g, out, fake = self.net.generator_step_loss(x, weights, x_in)
        if not math.isfinite(out["g"]):
            raise NonFinite("generator loss")
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        if not _finite(p.grad for p in g.parameters()):
            raise NonFinite("generator gradient")
        self.opt_g.step()
        # discriminator update: real vs the (detached) fake
        with _autocast(self.device, tc.precision):
            loss_d, out_d = self.net.discriminator_step_loss(x, fake.detach())
        if not math.isfinite(out_d["d"]):
            raise NonFinite("discriminator loss")
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        if not _finite(p.grad for p in d.parameters()):
            raise NonFinite("discriminator gradient")
        self.opt_d.step()
        out.update(out_d)
        if out_d["d"] < tc.d_reinit_below:
            init_weights(self.net.discriminator)
            out["d_reinit"] = 1.0
        if not _finite(self.net.state_dict().values()):  # an update that overflowed, or BatchNorm's running statistics
            raise NonFinite("weights")
        self._update_ema()
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema ← d·ema + (1 − d)·G for the weights and the floating-point BatchNorm statistics (counters copied), with
        d = min(ema_decay, (1 + t) / (10 + t)) at update t: the usual warm-up, so that a short run is not an average
        dominated by its random initialisation (at 0.999 the average would reach back 1,000 steps)."""
        if self.ema is None:
            return
        self.ema_updates += 1
        t = self.ema_updates
        d = min(self.cfg.train.ema_decay, (1.0 + t) / (10.0 + t))
        g = self.net.generator
        for e, p in zip(self.ema.parameters(), g.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.ema.buffers(), g.buffers()):
            if e.is_floating_point():
                e.lerp_(b, 1.0 - d)
            else:
                e.copy_(b)

    @contextlib.contextmanager
    def shipped(self) -> Any:
        """The network as it is validated, selected and written: with the EMA generator in place of the trained one
        when ``train.ema_decay`` > 0 (the optimizer keeps training the live generator)."""
        if self.ema is None:
            yield self.net
            return
        live = self.net.generator
        self.net.generator = self.ema
        try:
            yield self.net
        finally:
            self.net.generator = live
            self.net.train()

    def _end_epoch(
        self, epoch: int, sums: dict[str, float], seconds: float, imgs: int, best: dict[str, Any], history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        n = max(1.0, sums.pop("_n", 1.0))
        rec: dict[str, Any] = {"epoch": epoch + 1}
        rec.update({k: (v / n if k != "d_reinit" else v) for k, v in sums.items()})
        rec["seconds"] = round(seconds, 3)
        rec["images_per_s"] = round(imgs / seconds, 1) if seconds > 0 and imgs else None
        recovered = sum(1 for r in self.recoveries if r.epoch == epoch + 1)
        if recovered:
            rec["recovered"] = recovered
        if not _finite(self.net.state_dict().values()):  # e.g. D's classifier, which the score does not read
            raise NonFinite("weights")
        with self.shipped() as net:
            rep = validation_report(net, self.data, self.cfg, self.device, self.synthetic, self.said)
        bank = rep.pop("bank", None)
        name, value, mode = rep.pop("signal")
        if not (math.isfinite(value) and math.isfinite(rep["val_loss"])):
            raise NonFinite("validation signal")
        rec["val_loss"] = rep["val_loss"]
        for key in ("val_auroc", "val_synth_auroc", "val_synth_pixel_auroc"):
            if key in rep:
                rec[key] = rep[key]
        improved = self._improves(best, value, rep["val_loss"], mode)
        rec["best"] = improved
        if improved:
            best.update({"value": value, "epoch": epoch + 1, "signal": name, "val_loss": rep["val_loss"]})
            with self.shipped():
                self._write_best(self._card(rep, epoch + 1, name, value), bank)
        log.info(
            "epoch %d/%d  g %.4f  d %.4f  %s %.4f%s  %.1f img/s",
            epoch + 1, self.cfg.train.epochs, rec.get("g", float("nan")), rec.get("d", float("nan")),
            name, value, "  (best)" if improved else "", rec["images_per_s"] or 0.0,
        )
        return rec

    @staticmethod
    def _improves(best: dict[str, Any], value: float, val_loss: float, mode: str) -> bool:
        """Better on the selection signal, or equal on it (a saturated AUROC) with a lower validation loss."""
        if best["value"] is None:
            return True
        if value == best["value"]:
            return val_loss < best.get("val_loss", math.inf)
        return bool(value > best["value"] if mode == "max" else value < best["value"])

    def _card(self, rep: dict[str, Any], epoch: int, signal_name: str, value: float) -> ModelCard:
        metrics = {"val_loss": rep["val_loss"]}
        for key in ("val_auroc", "val_synth_auroc", "val_synth_pixel_auroc"):
            if key in rep:
                metrics[key] = rep[key]
        sc = self.cfg.score
        formula = ("lam*rec + (1-lam)*lat" if sc.mode == "paper" else "lam*(rec-rec_mean)/rec_std + (1-lam)*(lat-lat_mean)/lat_std")
        formula += "; rec = " + ("mean((x-G(x))^2)" if sc.pool == 0 else f"max of {sc.pool}x{sc.pool} box-smoothed map")
        formula += "; lat = mean((f(x)-f(G(x)))^2)"
        bank = rep.get("bank_info")
        if bank is not None:
            w = bank["weight"]
            formula = (f"(1-{w:g})*[{formula}] + {w:g}*" + ("(bank-bank_mean)/bank_std" if sc.mode != "paper" else "bank"))
            if bank.get("kind") == "gaussian":
                formula += (f"; bank = Mahalanobis distance of the generator encoder's 2x2 map ({bank['dim']} values) to the Gaussian "
                            f"of {bank['size']} normal training images (ridge {bank['shrink']:g} x mean eigenvalue)")
            else:
                formula += (f"; bank = max over the {bank['patches']} patches of the "
                            + ("generator encoder's 4x4 map" if bank.get("source") == "encoder" else "discriminator's f(x)")
                            + f" of the distance to the nearest of {bank['size']} normal training features ({bank['subsample']})")
        score = ScoreSpec(lam=rep["lam"], lam_method=rep["lam_method"], mode=str(sc.mode), pool=int(sc.pool or 0),
                          term_stats=rep["term_stats"], formula=formula, val_stats=ValStats(**rep["val_stats"]),
                          map_scale=rep["map_scale"], bank=bank, head=head_record(self.cfg.model.arch, sc, rep["lam"]),
                          threshold=Threshold(**rep["threshold"]))
        selection = f"{signal_name} on validation ({'max' if signal_name == 'val_auroc' else 'min'})"
        if signal_name == "val_auroc":
            selection += ", ties to the lower val_loss"
        ema = None
        if self.ema is not None:
            t, decay = self.ema_updates, self.cfg.train.ema_decay
            ema = {"decay": decay, "updates": t, "decay_at_last_update": min(decay, (1.0 + t) / (10.0 + t)),
                   "schedule": "min(decay, (1+t)/(10+t)) at update t", "of": "generator weights and BatchNorm statistics"}
            selection += "; the generator's EMA is validated, selected and exported"
        return build_card(
            self.cfg, score=score,
            data={"source": self.data.name, "fingerprint": self.data.fingerprint, "n_train": len(self.data.train),
                  "n_val": len(self.data.val), "val_has_anomalies": self.data.val.has_anomalies, "layout": self.data.layout,
                  **({"val_split": self.data.val_split} if self.data.val_split else {})},
            training=Training(best_epoch=epoch, selection=selection, selection_value=value, device=str(self.device),
                              epochs_run=epoch, recoveries=list(self.recoveries), ema=ema),
            metrics=metrics, versions={"torch": torch.__version__, "numpy": np.__version__},
        )


def train(data: Dataset, cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True) -> ModelCard:
    """Train a model folder at ``out``; see :class:`Trainer`."""
    return Trainer(data, cfg, out, progress=progress).fit(resume=resume)
