"""Typed, frozen configuration for every stage: one place for defaults.

Every default carries a one-line comment saying why it is that value. A config can be
loaded from a TOML file (``--config``) whose tables mirror the dataclasses::

    [model]
    isize = 64
    [train]
    epochs = 15

Command-line options override values from the file, which override these defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from skipgan_edge.compat import tomllib
from skipgan_edge.errors import ConfigError

VALID_ISIZES = (32, 64, 128, 256)


# ------------------------------------------------------------------------------- numeric limits
@dataclass(frozen=True)
class Limit:
    """The values one numeric option or config key may take: a finite number (an integer where ``integer``) in
    [lo, hi] (an open end where ``lo_open`` / ``hi_open``; None: unbounded). ``text`` replaces the generated
    description in the error. ``None`` (an option not given) always passes."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False
    hi_open: bool = False
    text: str = ""

    def describe(self) -> str:
        if self.text:
            return self.text
        kind = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            return f"{kind} in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{kind} {'above' if self.lo_open else 'of at least'} {_num(self.lo)}"
        if self.hi is not None:
            return f"{kind} {'below' if self.hi_open else 'of at most'} {_num(self.hi)}"
        return kind

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and not float(value).is_integer()):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return not (self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi))

    def check(self, name: str, value: Any) -> None:
        """One line naming ``name`` (an option like ``--batch`` or a file's key) unless ``value`` is allowed."""
        if value is not None and not self.ok(value):
            raise ConfigError(f"{name} must be {self.describe()}, got {value!r}", key=name)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


#: One rule per numeric value of the runtime, shared by the command line (named as its option, ``--max-frames``)
#: and the cell file (named as its key, ``[serve]: 'summary_every_s'``). Every float must be finite: a NaN or an
#: infinity is never a setting (``threshold = nan`` turned every alarm off; ``--mqtt-flush-ms inf`` never sent).
#: Intervals have a floor well above 0: 0 meant a loop that spins at 100 % CPU and ignores signals.
LIMITS: dict[str, Limit] = {
    "batch": Limit(1, 4096, integer=True),  # frames per backend call (0 or less: the batcher never filled a batch)
    "max_wait_ms": Limit(0, 60_000),  # the batcher's wait for more frames
    "threshold": Limit(),  # a normalized score: any finite number
    "overlap": Limit(0, 1, hi_open=True),  # tile overlap share (1: a stride of 0)
    "max_frames": Limit(1, integer=True),  # stop after this many frames
    "debounce": Limit(1, 100_000, integer=True),  # consecutive anomalous frames that open an alarm event (normal ones close it)
    "replay_fps": Limit(0, 1000, lo_open=True),  # a video played as a camera (0: never a frame)
    "fps": Limit(0, 1000, lo_open=True),  # a camera's capture rate
    "width": Limit(1, 65535, integer=True),
    "height": Limit(1, 65535, integer=True),
    "stop_after_idle": Limit(0, 30 * 86400, lo_open=True),  # watch folders: seconds with nothing new
    "reconnect_attempts": Limit(0, 1_000_000, integer=True),
    "decode_threads": Limit(0, 1024, integer=True, text="0 (FFmpeg's default) or more, at most 1024"),
    "threads": Limit(0, 1024, integer=True, text="0 (the runtime's default) or more, at most 1024"),
    "metrics_port": Limit(1, 65535, integer=True, text="a TCP port in 1-65535 (0 is refused: a scraper needs a known port)"),
    "mqtt_buffer": Limit(1, 10_000_000, integer=True),  # messages kept while the broker is away
    "mqtt_heartbeat_s": Limit(0.1, 86_400),
    "mqtt_flush_ms": Limit(0, 10_000),  # 0: every batch's results at once
    "summary_every_s": Limit(0.1, 7 * 86_400),  # 0 wrote 721,944 log lines in 8 s
    "reload_poll_s": Limit(0.01, 3600),  # model-file watch interval
    "retry_max_s": Limit(0.1, 86_400),  # cap of a camera's reopen backoff (0: a reopen loop without pause)
    "queue_size": Limit(1, 100_000, integer=True),
    "fpr": Limit(0, 0.5, lo_open=True, hi_open=True, text="in (0, 0.5)"),  # commissioning's promised false-alarm rate
    "frames": Limit(1, 100_000_000, integer=True),  # frames to collect per source
    # the other verbs' numeric options (command line only)
    "http_port": Limit(1, 65535, integer=True, text="a TCP port in 1-65535"),
    "grpc_port": Limit(1, 65535, integer=True, text="a TCP port in 1-65535"),
    "triton_metrics_port": Limit(1, 65535, integer=True, text="a TCP port in 1-65535"),
    "calib_size": Limit(1, 1_000_000, integer=True),  # calibration frames to keep
    "isize": Limit(8, 4096, integer=True),
    "channels": Limit(1, 3, integer=True),
    "max_drop": Limit(0, 1),  # an AUROC drop
    "workspace": Limit(1, 1 << 20, integer=True),  # MiB
    "dla_core": Limit(0, 15, integer=True),
    "opt_level": Limit(0, 5, integer=True),
    "sm": Limit(50, 129, integer=True, text="a compute capability such as 87 (Jetson Orin) or 89 (Ada), 50 to 129"),
    "warmup": Limit(0, 1_000_000, integer=True),
    "iterations": Limit(1, 100_000_000, integer=True),
    "duration": Limit(0, 86_400, lo_open=True),
    "epochs": Limit(1, 100_000, integer=True),
    "image_size": Limit(8, 4096, integer=True),
    "n_train": Limit(2, 10_000_000, integer=True, text="an integer of at least 2 (train needs 2 normal images)"),
    "n_test_good": Limit(0, 10_000_000, integer=True),
    "n_test_defect": Limit(0, 10_000_000, integer=True),
    "max_train": Limit(1, 10_000_000, integer=True),
    "max_test": Limit(1, 10_000_000, integer=True),
    "video_frames": Limit(1, 10_000_000, integer=True),
}


def check_limits(values: Mapping[str, Any], name: Any = None) -> None:
    """Check each ``values[key]`` against ``LIMITS[key]``; one line naming ``name(key)`` (default: the key) for the first
    that is refused. None passes (not given)."""
    for key, value in values.items():
        LIMITS[key].check(name(key) if name is not None else key, value)


def option_name(key: str) -> str:
    """The command-line option that sets ``LIMITS[key]`` (``mqtt_heartbeat_s`` is ``--mqtt-heartbeat``)."""
    return "--" + key.removesuffix("_s").replace("_", "-") if key.startswith("mqtt_") else "--" + key.replace("_", "-")


@dataclass(frozen=True)
class ModelConfig:
    """Network shape. Defaults are the paper's except ngf/ndf, which are sized for CPU."""

    arch: str = "skipganomaly"  # the paper's model; the registry in model/ lists others
    isize: int = 32  # input side in pixels; the UNet depth is log2(isize)
    channels: int = 3  # 3 = BGR camera frames, 1 = grayscale / X-ray
    ngf: int = 64  # generator base width, the authors' default
    ndf: int = 64  # discriminator base width, the authors' default
    nz: int = 100  # size of the discriminator feature f(x) used by the latent loss and score
    skip_dropout: float = 0.0  # channel dropout on the UNet skip connections while training (0 = the paper)
    feature_layer: str = "penultimate"  # D layer for f(x): penultimate (4x4 map, measured better) or last (the paper's nz-d conv)
    skip_levels: str = "innermost"  # UNet skips kept: innermost (measured best), all (the paper), none (an autoencoder), or "1,3"

    def validate(self) -> None:
        if self.isize not in VALID_ISIZES:
            raise ConfigError(f"model.isize must be one of {VALID_ISIZES}, got {self.isize}", key="model.isize")
        if self.channels not in (1, 3):
            raise ConfigError(f"model.channels must be 1 or 3, got {self.channels}", key="model.channels")
        if self.feature_layer not in ("last", "penultimate"):
            raise ConfigError(f"model.feature_layer must be last or penultimate, got {self.feature_layer!r}", key="model.feature_layer")
        if not 0.0 <= self.skip_dropout < 1.0:
            raise ConfigError(f"model.skip_dropout must be in [0, 1), got {self.skip_dropout}", key="model.skip_dropout")
        for name in ("ngf", "ndf", "nz"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}", key=f"model.{name}")
        self.skip_level_set  # noqa: B018 (validates)

    @property
    def skip_level_set(self) -> frozenset[int]:
        """The UNet levels that keep their skip connection (1 = full resolution ... depth-1 = innermost)."""
        levels = range(1, self.depth)
        text = self.skip_levels.strip().lower()
        if text == "all":
            return frozenset(levels)
        if text == "innermost":  # the 2x2 bottleneck's skip only (benchmarks/results/synthval_study.md)
            return frozenset({self.depth - 1})
        if text in ("none", ""):
            return frozenset()
        try:
            chosen = frozenset(int(t) for t in text.split(","))
        except ValueError:
            raise ConfigError(f"model.skip_levels must be innermost, all, none or comma-separated levels like 1,3; got {self.skip_levels!r}",
                              key="model.skip_levels") from None
        bad = sorted(chosen - set(levels))
        if bad:
            raise ConfigError(f"model.skip_levels {bad} out of range: isize {self.isize} has levels 1..{self.depth - 1}", key="model.skip_levels")
        return chosen

    @property
    def depth(self) -> int:
        return int(math.log2(self.isize))


#: whose patch features a feature bank keeps (model/bank.py): the generator encoder's 4×4 map, or D's f(x)
BANK_SOURCES = ("encoder", "discriminator")
#: what the bank head keeps (model/bank.py): ``gaussian``, one Gaussian of the generator encoder's 2×2 map (its mean and
#: whitening matrix; the term is the Mahalanobis distance), or ``nearest``, normal patch features (the term is the
#: distance of the least normal patch to its nearest normal feature)
BANK_KINDS = ("gaussian", "nearest")
#: The feature bank's upper bound: 16,384 features of a 128-channel map (the encoder's or D's at width 32, isize 32)
#: are 8 MiB of FP32 constants in the graph and 67 MFLOP per image, more than those networks' 54; the bank's channels,
#: bytes and FLOPs double at width 64 and again at isize 64 and above (the encoder's 4×4 map has 8·ngf channels there).
MAX_BANK = 16384
#: The gaussian bank's upper bound on D, the length of the generator encoder's flattened 2×2 map (8·ngf channels × 4
#: positions at every isize): its whitening matrix is D² FP32 constants in the graph and D² multiply-adds per image, 64
#: MiB and 17 MFLOP at 4,096 (ngf 128), a quarter of that at ngf 64; fitting it is one D × D eigendecomposition.
MAX_GAUSS_DIM = 4096
#: 1 is the bank term alone (a measured head); 0 would keep a bank in the graph that counts for nothing
BANK_WEIGHT = Limit(0, 1, lo_open=True, text="a weight in (0, 1] (1: the bank term alone); to turn the bank off use --bank-size 0")


@dataclass(frozen=True)
class ScoreConfig:
    """How the anomaly score is formed from the two terms (see model/scorer.py)."""

    lam: float | None = None  # weight of the reconstruction term in s(x); None = the architecture's default (model/networks.py)
    mode: str | None = None  # paper: λ·rec + (1-λ)·lat on raw terms; standardized: terms in units of their normal spread; None = the architecture's
    pool: int | None = None  # 0: rec = mean of the anomaly map (paper); k > 0: max of the k×k box-smoothed map; None = the architecture's
    select_lam: bool = False  # choose λ in {0, 0.1, ..., 1} by validation AUROC when the data has labelled validation anomalies
    threshold: str = "auto"  # alarm policy (thresholds.py): auto, fpr:Q, f1, max-normal; auto = f1 on labelled anomalies, else the study's winner
    synthetic_val: bool = True  # without labelled validation anomalies, make synthetic ones from the normal validation images
    bank_size: int | None = None  # feature-bank head (0 = off; None = the arch's: 4096 skipganomaly): nearest keeps this many normal
    # patch features in the graph; gaussian fits its Gaussian on at most this many training images' maps
    bank_weight: float = 0.75  # weight of the bank term; the two-term score gets 1 - bank_weight (bank_size > 0 only)
    bank_source: str | None = None  # whose patch features a nearest bank keeps: encoder (G's 4×4 map) or discriminator (D's f(x)); None = the arch's
    bank_subsample: str = "coreset"  # how a nearest bank is chosen from the training images' patch features: coreset or
    # random; a gaussian bank fits all the training images' maps, a seeded random bank_size of them when there are more
    bank_kind: str | None = None  # gaussian (a Gaussian of G's 2×2 map) or nearest (patch features); None = the arch's (nearest with a bank_source)

    def validate(self) -> None:
        if self.mode not in (None, "paper", "standardized"):
            raise ConfigError(f"score.mode must be paper or standardized, got {self.mode!r}", key="score.mode")
        if self.bank_subsample not in ("coreset", "random"):
            raise ConfigError(f"score.bank_subsample must be coreset or random, got {self.bank_subsample!r}", key="score.bank_subsample")
        if self.bank_source not in (None, *BANK_SOURCES):
            raise ConfigError(f"score.bank_source must be one of {', '.join(BANK_SOURCES)}, got {self.bank_source!r}", key="score.bank_source")
        if self.bank_kind not in (None, *BANK_KINDS):
            raise ConfigError(f"score.bank_kind must be one of {', '.join(BANK_KINDS)}, got {self.bank_kind!r}", key="score.bank_kind")
        if self.bank_size is not None:
            Limit(0, MAX_BANK, integer=True, text=f"0 (off) or at most {MAX_BANK} (features of a nearest bank, images a gaussian "
                  "bank is fitted on)").check("score.bank_size", self.bank_size)
        # what a card may hold: [0, 1] (a card written before weight 0 was refused still loads); training asks for
        # (0, 1] with a bank (RunConfig.validate)
        Limit(0, 1).check("score.bank_weight", self.bank_weight)
        from skipgan_edge.thresholds import parse_policy

        parse_policy(self.threshold, "score.threshold")
        if self.pool is not None and self.pool < 0:
            raise ConfigError(f"score.pool must be >= 0, got {self.pool}", key="score.pool")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Defaults are the paper's (Akçay et al. 2019, section 4)."""

    epochs: int = 15  # the authors' default niter
    batch: int = 64  # the authors' default batch size
    lr: float = 2e-4  # Adam learning rate, the paper's
    beta1: float = 0.5  # Adam beta1, DCGAN practice used by the paper
    beta2: float = 0.999  # Adam beta2, the PyTorch default the paper keeps
    w_adv: float = 1.0  # weight of the adversarial term in the generator loss
    w_con: float = 50.0  # weight of the L1 reconstruction term
    w_lat: float = 1.0  # weight of the latent (feature-matching) term
    d_reinit_below: float = 1e-5  # re-initialise D when its loss collapses below this
    seed: int = 0  # every random choice derives from it: runs are reproducible
    device: str = "auto"  # auto = CUDA when present, else CPU
    val_fraction: float = 0.1  # share of the normal training images held out for validation
    precision: str = "fp32"  # fp32, or bf16 (CPU autocast) / amp (CUDA autocast fp16)
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default (all cores)
    input_noise: float = 0.0  # std of Gaussian noise added to the generator's input while training (losses use the clean x)
    max_recoveries: int = 3  # restarts from the last good checkpoint after a non-finite loss or gradient before the run stops
    recover_lr_factor: float = 0.5  # each restart multiplies both learning rates by this (the same rate would diverge again)
    ema_decay: float = 0.0  # EMA of the generator's weights and BN statistics, validated, selected and exported (0 = off)

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be at least 1, got {self.epochs}", key="train.epochs")
        if self.batch < 2:
            raise ConfigError(f"train.batch must be at least 2 (BatchNorm needs it), got {self.batch}", key="train.batch")
        if not 0.0 < self.val_fraction < 0.9:
            raise ConfigError(f"train.val_fraction must be in (0, 0.9), got {self.val_fraction}", key="train.val_fraction")
        if self.precision not in ("fp32", "bf16", "amp"):
            raise ConfigError(f"train.precision must be fp32, bf16 or amp, got {self.precision!r}", key="train.precision")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"train.lr must be a positive finite number, got {self.lr}", key="train.lr")
        if self.max_recoveries < 0:
            raise ConfigError(f"train.max_recoveries must be 0 (stop at the first non-finite step) or more, got {self.max_recoveries}",
                              key="train.max_recoveries")
        if not 0.0 < self.recover_lr_factor < 1.0:
            raise ConfigError(f"train.recover_lr_factor must be in (0, 1): a restart at the same learning rate diverges again; "
                              f"got {self.recover_lr_factor}", key="train.recover_lr_factor")
        for key, limit in _TRAIN_LIMITS.items():  # the rest: finite, and in range
            limit.check(f"train.{key}", getattr(self, key))


_TRAIN_LIMITS = {"epochs": Limit(1, 100_000, integer=True), "batch": Limit(2, 65536, integer=True),
                 "beta1": Limit(0, 1, hi_open=True), "beta2": Limit(0, 1, hi_open=True), "w_adv": Limit(0, 1e6),
                 "w_con": Limit(0, 1e6), "w_lat": Limit(0, 1e6), "d_reinit_below": Limit(0, 1e6), "seed": Limit(0, 2**32 - 1, integer=True),
                 "threads": LIMITS["threads"], "input_noise": Limit(0, 1e3), "max_recoveries": Limit(0, 1000, integer=True),
                 "ema_decay": Limit(0, 1, hi_open=True, text="0 (off) or a decay in (0, 1) such as 0.999")}


@dataclass(frozen=True)
class RunConfig:
    """Everything ``train`` needs; stored whole in the model card."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def validate(self, score_defaults: Mapping[str, Any]) -> RunConfig:
        """Check every value; return a copy with the architecture's score defaults (``mode``, ``lam``, ``pool``,
        ``bank_size``: ``skipgan_edge.model.networks.default_score(arch)``, passed in so that config imports no model)
        filled in. λ not given takes the default's ``lam`` with a bank and ``lam_without_bank`` without one: a
        bank turned off (``bank_size = 0``) leaves the measured two-term score, not the reconstruction term alone."""
        arch_default = score_defaults
        bank_size = self.score.bank_size if self.score.bank_size is not None else int(arch_default.get("bank_size", 0))
        if isinstance(bank_size, int) and bank_size > 0:  # a weight of 0 would keep a bank that counts for nothing
            BANK_WEIGHT.check("score.bank_weight", self.score.bank_weight)
        self.model.validate()
        self.train.validate()
        self.score.validate()
        if self.score.lam is not None:
            lam = self.score.lam
        else:
            lam = arch_default["lam"] if bank_size > 0 else arch_default.get("lam_without_bank", arch_default["lam"])
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"score.lam must be in [0, 1], got {lam}", key="score.lam")
        mode = self.score.mode if self.score.mode is not None else arch_default["mode"]
        pool = self.score.pool if self.score.pool is not None else arch_default["pool"]
        # a source names whose patch features to keep: a nearest bank's (the gaussian bank reads its own map)
        kind_default = "nearest" if self.score.bank_source is not None else str(arch_default.get("bank_kind", "nearest"))
        kind = self.score.bank_kind if self.score.bank_kind is not None else kind_default
        kinds = tuple(arch_default.get("bank_kinds", BANK_KINDS))
        if bank_size > 0 and kind not in kinds:
            raise ConfigError(f"score.bank_kind {kind} is not available for arch {self.model.arch}: use {' or '.join(kinds)}",
                              key="score.bank_kind")
        source_default = "encoder" if kind == "gaussian" else str(arch_default.get("bank_source", "discriminator"))
        source = self.score.bank_source if self.score.bank_source is not None else source_default
        sources = tuple(arch_default.get("bank_sources", BANK_SOURCES))
        if bank_size > 0 and source not in sources:
            raise ConfigError(f"score.bank_source {source} is not available for arch {self.model.arch}: use {' or '.join(sources)}",
                              key="score.bank_source")
        if bank_size > 0 and kind == "gaussian":
            if bank_size == 1:
                raise ConfigError("a gaussian bank is fitted on at least 2 training images: give --bank-size 2 or more, or 0 (off)")
            dim = 32 * self.model.ngf  # the gaussian bank's D: the 2×2 map's 8·ngf channels, flattened
            if dim > MAX_GAUSS_DIM:
                raise ConfigError(f"the gaussian bank of a width-{self.model.ngf} generator is a {dim} x {dim} matrix "
                                  f"({4 * dim * dim / 2**20:.0f} MiB in the graph), above {MAX_GAUSS_DIM} x {MAX_GAUSS_DIM} "
                                  f"(--ngf {MAX_GAUSS_DIM // 32}): lower --ngf, or give --bank-kind nearest")
            if source != "encoder":
                raise ConfigError(f"the gaussian bank fits the generator encoder's 2x2 map; --bank-source {source} chooses a "
                                  "nearest bank's patch features: drop --bank-source, or give --bank-kind nearest")
        score = dataclasses.replace(self.score, lam=float(lam), mode=str(mode), pool=int(pool), bank_size=int(bank_size),
                                    bank_source=source, bank_kind=kind)
        return dataclasses.replace(self, score=score)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(
            model=_build(ModelConfig, data.get("model", {}), "model"),
            train=_build(TrainConfig, data.get("train", {}), "train"),
            score=_build(ScoreConfig, data.get("score", {}), "score"),
        )


def _build(cls: type[Any], values: dict[str, Any], table: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{table}]: {', '.join(unknown)}; known: {', '.join(known)}")
    return cls(**typed_values(cls, values, f"[{table}] "))


def typed_values(cls: type[Any], values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked against the dataclass ``cls``'s annotations (an int is a valid float); one line naming the key
    (``where`` prefixes it) when a type is wrong. Unknown keys are the caller's to refuse, in its own words."""
    known = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        # the field's annotation names the accepted types ("float | None"); an int is a valid float
        allowed = [t.strip() for t in str(known[name].type).split("|") if t.strip() != "None"]
        if "float" in allowed and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value).__name__ not in allowed:
            raise ConfigError(f"{where}{name} must be {' or '.join(allowed)}, got {type(value).__name__} ({value!r})")
        out[name] = value
    return out


PAPER: dict[str, dict[str, Any]] = {"model": {"arch": "skipganomaly", "skip_dropout": 0.0, "feature_layer": "last", "skip_levels": "all"},
                                    "train": {"input_noise": 0.0, "ema_decay": 0.0},
         "score": {"lam": 0.9, "mode": "paper", "pool": 0, "select_lam": False, "bank_size": 0}}


def paper_overrides(overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``--paper``: the exact paper formulation; refuses options that contradict it."""
    out = {t: dict(v) for t, v in overrides.items()}
    for table, values in PAPER.items():
        for key, value in values.items():
            given = out.get(table, {}).get(key)
            if given is not None and given != value:
                raise ConfigError(f"--paper fixes {table}.{key} = {value}; drop the option that sets it to {given}")
            out.setdefault(table, {})[key] = value
    for key, option in (("bank_weight", "--bank-weight"), ("bank_source", "--bank-source"), ("bank_kind", "--bank-kind")):
        given = out.get("score", {}).get(key)
        if given is not None:
            raise ConfigError(f"--paper has no feature bank (score.bank_size = 0), so {option} {given} does nothing; drop {option}")
    return out


def refuse_idle_bank_weight(given: Any, bank_size: int | None, where: str, key: str = "weight",
                            size_from: str = "--bank-size 0 or --paper") -> None:
    """One line when a bank weight was set (``given``: the value from ``where``, the option or config key that set it;
    None: not set) for a run without a bank (``bank_size`` 0, from ``size_from``: ``--bank-size 0``, ``--paper``, a
    config file or the architecture's default): it would weigh nothing, and the card would record a weight that was
    never used. ``key``: what was set (weight, source or kind)."""
    if given is not None and bank_size == 0:
        what = {"source": "chooses the feature bank's source", "kind": "chooses the feature bank's kind"}.get(key, "weighs the feature bank")
        raise ConfigError(f"{where} {given} {what}, but score.bank_size is 0 ({size_from}): "
                          f"no bank; drop the bank {key}, or give --bank-size above 0")


#: The largest config file read: a cell of a thousand cameras is under 200 KiB; a path to /dev/zero or a video is refused.
MAX_CONFIG_BYTES = 1 << 20


def read_toml(path: Path, what: str = "config file") -> dict[str, Any]:
    """Read a TOML file into nested dicts; one line for every way it cannot be (missing, a folder, a device, too large,
    unreadable, not UTF-8, not TOML), before anything else is done."""
    import os
    import stat

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{what} {path} is a folder; give the TOML file in it")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise ConfigError(f"{what} {path} is not a regular file (a device or socket); give a TOML file")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a config; give the TOML file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); save it as UTF-8") from None
    try:
        out = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None
    return out


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config file into nested dicts (:func:`read_toml`); a bad file is a one-line error."""
    return read_toml(path)


def merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overlay non-None override values (from CLI options) onto a config dict."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for table, values in overrides.items():
        tbl = out.setdefault(table, {})
        for key, value in values.items():
            if value is not None:
                tbl[key] = value
    return out
