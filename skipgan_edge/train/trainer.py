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
(the paper's non-adversarial objective on data the generator did not train on).

Checkpointing: ``RUN/checkpoint/state.safetensors`` holds everything needed to resume (both
networks, both optimizers, the torch RNG, epoch, step, partial sums) and is written atomically
at the end of every epoch and when the run is interrupted (Ctrl-C or SIGTERM, between steps).
A SIGKILL loses at most the epoch in progress. Epoch ``e`` shuffles with
``numpy.random.default_rng([seed, e])``, so a resumed run sees exactly the batches an
uninterrupted one would, and ends with the same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import sys
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
    WEIGHTS_NAME,
    ModelCard,
    ScoreSpec,
    Threshold,
    ValStats,
    atomic_write_bytes,
    atomic_write_json,
    build_card,
)
from skipgan_edge.config import RunConfig
from skipgan_edge.data.datasets import Dataset
from skipgan_edge.data.synthval import SyntheticDefects, make_defects
from skipgan_edge.errors import ConfigError, ModelFolderError, SkipganError
from skipgan_edge.metrics import auroc, f1_at
from skipgan_edge.model.networks import build_model, default_score, init_weights
from skipgan_edge.model.scorer import combine, score_terms, to_model_input
from skipgan_edge.thresholds import apply_policy, resolve

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
                keep_maps: bool = False) -> dict[str, np.ndarray]:
    """Eval-mode reconstruction term, latent term and mean |x - G(x)| for a uint8 NHWC array (and the anomaly maps)."""
    was_training = net.training
    net.eval()
    rec, lat, l1s, peaks, maps = [], [], [], [], []
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
    net.train(was_training)
    out = {"rec": np.concatenate(rec), "lat": np.concatenate(lat), "l1": np.concatenate(l1s), "map_peak": np.concatenate(peaks)}
    if keep_maps:
        out["maps"] = np.concatenate(maps)
    return out


def validation_report(
    net: torch.nn.Module, data: Dataset, cfg: RunConfig, device: torch.device, synthetic: SyntheticDefects | None = None,
) -> dict[str, Any]:
    """Scores of the validation split, their statistics, the threshold and the selection signal.

    ``cfg`` is a validated config (``RunConfig.validate``): the score's mode, λ and pool are filled in.
    ``synthetic``: anomalous copies of the normal validation images (``data.synthval``), used when the data has
    no labelled validation anomalies, for the threshold policy's recall and the synthetic-validation AUROC."""
    sc = cfg.score
    mode, pool = str(sc.mode), int(sc.pool or 0)
    terms = score_split(net, data.val.images, device, pool)
    is_normal = data.val.labels == 0
    term_stats = {
        "rec_mean": float(terms["rec"][is_normal].mean()), "rec_std": float(terms["rec"][is_normal].std()),
        "lat_mean": float(terms["lat"][is_normal].mean()), "lat_std": float(terms["lat"][is_normal].std()),
    }
    lam = float(sc.lam or 0.0)
    lam_method = "configured"
    if sc.select_lam and data.val.has_anomalies:
        grid = [i / 10 for i in range(11)]
        aucs = [auroc(data.val.labels, combine(terms["rec"], terms["lat"], mode, g, term_stats)) for g in grid]
        lam, lam_method = grid[int(np.argmax(aucs))], "best validation AUROC over 0, 0.1, ..., 1"
    score = combine(terms["rec"], terms["lat"], mode, lam, term_stats)
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
    # the generator's non-adversarial objective on the held-out normal images
    rep["val_loss"] = float(cfg.train.w_con * terms["l1"][is_normal].mean() + cfg.train.w_lat * terms["lat"][is_normal].mean())
    anomalous, source = None, None
    if data.val.has_anomalies:
        anomalous, source = score[~is_normal], "labelled"
        rep["val_auroc"] = auroc(data.val.labels, score)
        rep["signal"] = ("val_auroc", rep["val_auroc"], "max")
    else:
        if synthetic is not None and len(synthetic.images):
            syn = score_split(net, synthetic.images, device, pool, keep_maps=True)
            anomalous, source = np.asarray(combine(syn["rec"], syn["lat"], mode, lam, term_stats)), "synthetic"
            rep["val_synth_auroc"] = auroc(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous])
            # the masks were kept: how well the anomaly map localises the synthetic defects
            rep["val_synth_pixel_auroc"] = auroc(synthetic.masks.reshape(-1), syn["maps"].reshape(-1))
        rep["signal"] = ("val_loss", rep["val_loss"], "min")
    policy = resolve(sc.threshold, data.val.has_anomalies)
    if policy == "f1" and anomalous is None:
        log.warning("--threshold f1 needs validation anomalies and there are none (synthetic validation is off): using max-normal")
        policy = "max-normal"
    try:
        choice = apply_policy(policy, normal, anomalous, source)
    except ConfigError as exc:  # too few validation images for the promised rate: say so, fall back to the strictest
        log.warning("%s; the threshold falls back to max-normal", exc)
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


class Trainer:
    """Trains one model into a run folder. ``fit()`` returns the model card."""

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
        if len(data.train) < cfg.train.batch:
            raise ConfigError(
                f"{len(data.train)} training images is fewer than one batch ({cfg.train.batch}); lower --batch or add images"
            )

    # -- signals ---------------------------------------------------------------------------
    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    # -- state -----------------------------------------------------------------------------
    def _save_state(self, epoch: int, step: int, partial: dict[str, float], history: list[dict[str, Any]], best: dict[str, Any]) -> Path:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for k, v in self.net.state_dict().items():
            tensors[f"net.{k}"] = v.detach().cpu().contiguous()
        t_g, m_g = _flatten_optimizer("opt_g", self.opt_g)
        t_d, m_d = _flatten_optimizer("opt_d", self.opt_d)
        tensors.update(t_g)
        tensors.update(t_d)
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {
            "epoch": epoch, "step": step, "partial": partial, "history": history, "best": best,
            "opt_g": m_g, "opt_d": m_d, "config": self.cfg.to_dict(),
            "data_fingerprint": self.data.fingerprint, "data_source": self.data.name,
            "format_version": FORMAT_VERSION,
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
        return meta

    def _write_best(self, card: ModelCard) -> None:
        """Weights with the card embedded (one atomic rename), then the readable model.json copy."""
        from safetensors.torch import save

        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        data = save(state, metadata={"card": json.dumps(card.to_dict())})
        atomic_write_bytes(self.out / WEIGHTS_NAME, data)
        atomic_write_json(self.out / CARD_NAME, card.replace(model_id=hashlib.sha256(data).hexdigest()[:16]).to_dict())

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> ModelCard:
        tc = self.cfg.train
        _set_determinism(tc.seed)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.net = build_model(self.cfg.model).to(self.device)
        self.net.train()
        g, d = self.net.generator, self.net.discriminator
        self.opt_g = torch.optim.Adam(g.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        self.opt_d = torch.optim.Adam(d.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2))
        start_epoch, start_step = 0, 0
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"value": None, "epoch": None}
        partial: dict[str, float] = {}
        if resume:
            meta = self._load_state()
            start_epoch, start_step, history, best, partial = meta["epoch"], meta["step"], meta["history"], meta["best"], meta["partial"]
            log.info("resuming %s at epoch %d step %d", self.out, start_epoch + 1, start_step)
        elif (self.out / STATE_NAME).exists() or (self.out / CARD_NAME).exists():
            raise ConfigError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        if not resume and metrics_path.exists():
            metrics_path.unlink()
        if resume:  # the checkpoint's history is the authority: a row written after the last checkpoint is not repeated
            atomic_write_bytes(metrics_path, "".join(json.dumps(r) + "\n" for r in history).encode())

        train_u8 = torch.from_numpy(self.data.train.images)  # (N, H, W, C) uint8, stays on the host
        n = len(train_u8)
        steps = n // tc.batch  # drop the last partial batch: BatchNorm statistics of 1-3 images are noise
        old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        t_start = time.perf_counter()
        try:
            for epoch in range(start_epoch, tc.epochs):
                perm = torch.from_numpy(np.random.default_rng([tc.seed, epoch]).permutation(n))
                sums = dict(partial) if epoch == start_epoch else {}
                first = start_step if epoch == start_epoch else 0
                partial = {}
                bar = self._bar(epoch, steps, first)
                t0 = time.perf_counter()
                imgs = 0
                for step in range(first, steps):
                    idx = perm[step * tc.batch : (step + 1) * tc.batch]
                    losses = self._step(train_u8[idx])
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + v
                    sums["_n"] = sums.get("_n", 0.0) + 1
                    imgs += tc.batch
                    if bar is not None:
                        rate = imgs / max(1e-9, time.perf_counter() - t0)
                        bar.set_postfix(g=f"{losses['g']:.3f}", d=f"{losses['d']:.3f}", img_s=f"{rate:.0f}", refresh=False)
                        bar.update(1)
                    if self._stop_signal is not None:
                        if bar is not None:
                            bar.close()
                        path = self._save_state(epoch, step + 1, sums, history, best)
                        raise Interrupted(self._stop_signal, path)
                if bar is not None:
                    bar.close()
                seconds = time.perf_counter() - t0
                rec = self._end_epoch(epoch, sums, seconds, imgs, best, history)
                history.append(rec)
                with open(metrics_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                self._save_state(epoch + 1, 0, {}, history, best)
                if self.on_epoch:
                    self.on_epoch(rec)
                if self._stop_signal is not None:
                    raise Interrupted(self._stop_signal, self.out / STATE_NAME)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        log.info("trained %d epoch(s) in %.1f s", tc.epochs - start_epoch, time.perf_counter() - t_start)
        from skipgan_edge.card import load_card

        return load_card(self.out)

    def _bar(self, epoch: int, steps: int, first: int) -> Any:
        if not self.progress or not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        return tqdm(total=steps, initial=first, desc=f"epoch {epoch + 1}/{self.cfg.train.epochs}", unit="step", leave=False)

    def _step(self, batch_u8: torch.Tensor) -> dict[str, float]:
        tc = self.cfg.train
        x = to_model_input(batch_u8.to(self.device, non_blocking=True))  # (B, C, H, W)
        weights = (tc.w_adv, tc.w_con, tc.w_lat)
        # generator update (the architecture defines its losses: model/networks.py)
        x_in = x + tc.input_noise * torch.randn_like(x) if tc.input_noise > 0 else None
        with _autocast(self.device, tc.precision):
            loss_g, out, fake = self.net.generator_step_loss(x, weights, x_in)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        # discriminator update: real vs the (detached) fake
        with _autocast(self.device, tc.precision):
            loss_d, out_d = self.net.discriminator_step_loss(x, fake.detach())
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        out.update(out_d)
        if out_d["d"] < tc.d_reinit_below:
            init_weights(self.net.discriminator)
            out["d_reinit"] = 1.0
        return out

    def _end_epoch(
        self, epoch: int, sums: dict[str, float], seconds: float, imgs: int, best: dict[str, Any], history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        n = max(1.0, sums.pop("_n", 1.0))
        rec: dict[str, Any] = {"epoch": epoch + 1}
        rec.update({k: (v / n if k != "d_reinit" else v) for k, v in sums.items()})
        rec["seconds"] = round(seconds, 3)
        rec["images_per_s"] = round(imgs / seconds, 1) if seconds > 0 and imgs else None
        rep = validation_report(self.net, self.data, self.cfg, self.device, self.synthetic)
        name, value, mode = rep.pop("signal")
        rec["val_loss"] = rep["val_loss"]
        for key in ("val_auroc", "val_synth_auroc", "val_synth_pixel_auroc"):
            if key in rep:
                rec[key] = rep[key]
        improved = best["value"] is None or (value > best["value"] if mode == "max" else value < best["value"])
        if math.isnan(value):
            improved = False
        rec["best"] = bool(improved)
        if improved:
            best.update({"value": value, "epoch": epoch + 1, "signal": name})
            self._write_best(self._card(rep, epoch + 1, name, value))
        log.info(
            "epoch %d/%d  g %.4f  d %.4f  %s %.4f%s  %.1f img/s",
            epoch + 1, self.cfg.train.epochs, rec.get("g", float("nan")), rec.get("d", float("nan")),
            name, value, "  (best)" if improved else "", rec["images_per_s"] or 0.0,
        )
        return rec

    def _card(self, rep: dict[str, Any], epoch: int, signal_name: str, value: float) -> ModelCard:
        metrics = {"val_loss": rep["val_loss"]}
        for key in ("val_auroc", "val_synth_auroc", "val_synth_pixel_auroc"):
            if key in rep:
                metrics[key] = rep[key]
        sc = self.cfg.score
        formula = ("lam*rec + (1-lam)*lat" if sc.mode == "paper" else "lam*(rec-rec_mean)/rec_std + (1-lam)*(lat-lat_mean)/lat_std")
        formula += "; rec = " + ("mean((x-G(x))^2)" if sc.pool == 0 else f"max of {sc.pool}x{sc.pool} box-smoothed map")
        formula += "; lat = mean((f(x)-f(G(x)))^2)"
        score = ScoreSpec(lam=rep["lam"], lam_method=rep["lam_method"], mode=str(sc.mode), pool=int(sc.pool or 0),
                          term_stats=rep["term_stats"], formula=formula, val_stats=ValStats(**rep["val_stats"]),
                          map_scale=rep["map_scale"],
                          threshold=Threshold(**rep["threshold"]))
        return build_card(
            self.cfg, score=score,
            data={"source": self.data.name, "fingerprint": self.data.fingerprint, "n_train": len(self.data.train),
                  "n_val": len(self.data.val), "val_has_anomalies": self.data.val.has_anomalies},
            training={"best_epoch": epoch, "selection": f"{signal_name} on validation ({'max' if signal_name == 'val_auroc' else 'min'})",
                      "selection_value": value, "device": str(self.device), "epochs_run": epoch},
            metrics=metrics, versions={"torch": torch.__version__, "numpy": np.__version__},
        )


def train(data: Dataset, cfg: RunConfig, out: Path, resume: bool = False, progress: bool = True) -> ModelCard:
    """Train a model folder at ``out``; see :class:`Trainer`."""
    return Trainer(data, cfg, out, progress=progress).fit(resume=resume)
