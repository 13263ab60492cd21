"""Skip-GANomaly networks (Akçay, Atapour-Abarghouei, Breckon, IJCNN 2019).

Generator: a UNet encoder-decoder with skip connections, depth log2(isize), widths
ngf·(1, 2, 4, 8, 8, …), 4×4 stride-2 convolutions, BatchNorm, LeakyReLU(0.2) going down,
ReLU going up, Tanh out. Discriminator: a DCGAN encoder whose last convolution gives the
nz-dimensional feature f(x) (used by the latent loss and the score); a 3×3 classifier conv
on top gives the logit of D(x) (the losses take logits: ``model/losses.py``), a sigmoid D(x).

With isize 32, 3 channels and ngf = ndf = 64, nz = 100 and every skip (``skip_levels="all"``, as
``--paper``) the generator has 16,659,075 and the discriminator 1,069,700 parameters, the counts of
the authors' released code (tested).

What we do not copy from the official code: it adds an *uninitialised* noise tensor to the
generator input during training (its values are whatever memory held); we add none.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, ClassVar

import torch
from torch import nn

from skipgan_edge.config import ModelConfig

#: each TapConv2d's last eval-mode output, per thread (outside the module: a copy of the module copies none of it)
_TAPPED: weakref.WeakKeyDictionary[nn.Module, dict[int, torch.Tensor]] = weakref.WeakKeyDictionary()


class TapConv2d(nn.Conv2d):
    """A Conv2d that keeps its last eval-mode output (``last``): the feature bank reads the generator's encoder
    at this point without running the encoder twice (model/bank.py). The same weights and names as ``nn.Conv2d``,
    so model folders written before load unchanged. What it keeps is per thread (two threads scoring with one
    model each read their own pass) and held outside the module (a deep copy of the model copies no activation);
    in training mode it keeps nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        kept = _TAPPED.setdefault(self, {})
        if self.training:
            kept.pop(threading.get_ident(), None)
        else:
            kept[threading.get_ident()] = y
        return y

    @property
    def last(self) -> torch.Tensor | None:
        """This thread's last eval-mode output, or None."""
        return _TAPPED.get(self, {}).get(threading.get_ident())


class UnetBlock(nn.Module):
    """One level of the UNet: down, the inner levels, up, then concatenation with the input."""

    def __init__(
        self,
        outer: int,
        inner: int,
        sub: nn.Module | None,
        *,
        in_ch: int | None = None,
        outermost: bool = False,
        skip_dropout: float = 0.0,
        skip: bool = True,
        tap: bool = False,
    ) -> None:
        super().__init__()
        self.skip_drop = nn.Dropout2d(skip_dropout) if skip_dropout > 0 and not outermost else nn.Identity()
        in_ch = outer if in_ch is None else in_ch
        self.outermost = outermost
        self.skip = skip and not outermost  # concatenate the input to the output (the UNet skip at this level)
        self.out_channels = outer * 2 if self.skip else outer
        sub_out = sub.out_channels if isinstance(sub, UnetBlock) else inner  # what the level below hands up
        down_conv = (TapConv2d if tap else nn.Conv2d)(in_ch, inner, 4, 2, 1, bias=False)
        if outermost:
            up_conv = nn.ConvTranspose2d(sub_out, outer, 4, 2, 1)  # bias: nothing normalises it
            layers: list[nn.Module] = [down_conv, sub, nn.ReLU(), up_conv, nn.Tanh()]  # type: ignore[list-item]
        elif sub is None:  # innermost: no norm on the 1×1 bottleneck going down
            up_conv = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False)
            layers = [nn.LeakyReLU(0.2), down_conv, nn.ReLU(), up_conv, nn.BatchNorm2d(outer)]
        else:
            up_conv = nn.ConvTranspose2d(sub_out, outer, 4, 2, 1, bias=False)
            layers = [
                nn.LeakyReLU(0.2), down_conv, nn.BatchNorm2d(inner),
                sub,
                nn.ReLU(), up_conv, nn.BatchNorm2d(outer),
            ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.skip:
            return self.model(x)
        return torch.cat([self.skip_drop(x), self.model(x)], 1)  # (B, outer + outer, H, W)


class UnetGenerator(nn.Module):
    """G: x ↦ x̂, same shape, values in [-1, 1].

    Skip levels are numbered from the full-resolution end: level 1 concatenates the first
    convolution's output (isize/2 × isize/2) to the last up-convolution's input, level
    depth-1 is the innermost (2×2). ``ModelConfig.skip_levels`` keeps any subset: all of them is
    the paper (``--paper``), none is a plain encoder-decoder (an autoencoder). The default keeps
    only the innermost: the outer skips let the generator copy an anomaly through, and removing
    them raised test AUROC from 0.585 to 0.716 on Fashion-MNIST and from 0.948 to 0.998 on the
    textures, 3 seeds (benchmarks/results/synthval_study.md). A level without its skip hands
    up only its decoder's output, so the up-convolution above it has half the input channels.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ngf, p = cfg.ngf, cfg.skip_dropout
        keep = cfg.skip_level_set
        level = cfg.depth - 1  # the innermost block's level
        # blocks are built from the innermost (index 0, input 2×2) outward, block i taking a 2^(i+1) input; the
        # down-convolutions of block 1 (input 4×4, output 2×2: the gaussian bank's map) and block 2 (input 8×8, output
        # 4×4: the nearest bank's) are taps the score head reads
        block: nn.Module = UnetBlock(ngf * 8, ngf * 8, None, skip_dropout=p, skip=level in keep)  # innermost, 2×2 → 1×1
        index = 0
        for _ in range(cfg.depth - 5):
            level, index = level - 1, index + 1
            block = UnetBlock(ngf * 8, ngf * 8, block, skip_dropout=p, skip=level in keep, tap=index in (1, 2))
        index += 1
        block = UnetBlock(ngf * 4, ngf * 8, block, skip_dropout=p, skip=level - 1 in keep, tap=index in (1, 2))
        index += 1
        block = UnetBlock(ngf * 2, ngf * 4, block, skip_dropout=p, skip=level - 2 in keep, tap=index in (1, 2))
        block = UnetBlock(ngf, ngf * 2, block, skip_dropout=p, skip=level - 3 in keep)
        self.model = UnetBlock(cfg.channels, ngf, block, in_ch=cfg.channels, outermost=True)
        # the encoder's taps, outermost first (the 4×4 map's, then the 2×2 map's), held in a tuple so that they are not
        # registered (and saved) a second time
        self._tap: tuple[TapConv2d, ...] = tuple(m for m in self.modules() if isinstance(m, TapConv2d))

    @property
    def tap(self) -> TapConv2d:
        """The encoder's 4×4 down-convolution: its output is the nearest bank's feature map (4·ngf channels at
        isize 32, 8·ngf above)."""
        return self._tap[0]

    @property
    def tap2(self) -> TapConv2d:
        """The encoder's 2×2 down-convolution (the one that takes the 4×4 map): its output is the gaussian bank's
        feature map (8·ngf channels)."""
        return self._tap[1]

    def encoder_map(self, side: int = 4) -> torch.Tensor:
        """The encoder's ``side``×``side`` map (4: (B, C, 4, 4); 2: (B, C', 2, 2)) of the last eval-mode forward pass."""
        conv = self.tap if side == 4 else self.tap2
        if conv.last is None:
            raise RuntimeError("the encoder map is kept by an eval-mode forward pass of the generator; run one first")
        return conv.last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, C, H, W)


class Discriminator(nn.Module):
    """D: x ↦ (the logit of D(x), shape (B,); f(x)). :meth:`probability` gives D(x) ∈ [0, 1].

    The losses take the logit (``model/losses.py``: a BCE on probabilities has a ``nan`` gradient where a
    float32 sigmoid saturates). ``classifier`` keeps its Sigmoid after the conv, so weight names
    (``classifier.0.weight``) are those of every model folder written before; the forward pass stops at the conv.
    f(x) is the nz-d output of the last convolution (the paper's, ``feature_layer="last"``) or the
    flattened 4×4 map before it (``"penultimate"``: more spatial detail, one of the study's variants).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.penultimate = cfg.feature_layer == "penultimate"
        ndf = cfg.ndf
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        size, width = cfg.isize // 2, ndf
        while size > 4:
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)]
            width, size = width * 2, size // 2
        layers.append(nn.Conv2d(width, cfg.nz, 4, 1, 0, bias=False))  # (B, nz, 1, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Conv2d(cfg.nz, 1, 3, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        body = self.features[:-1](x)  # (B, 8·ndf·…, 4, 4)
        feat = self.features[-1](body)  # (B, nz, 1, 1)
        logit = self.classifier[0](feat).flatten()  # (B,)
        return logit, (body if self.penultimate else feat).flatten(1)  # (B,), (B, nz) or (B, C·16)

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) = sigmoid(logit), shape (B,)."""
        return torch.sigmoid(self.forward(x)[0])

    def feature(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) alone: what the score needs (the classifier, and for "penultimate" the last conv, are skipped)."""
        return (self.features[:-1](x) if self.penultimate else self.features(x)).flatten(1)


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation, as the authors': N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class SkipGANomaly(nn.Module):
    """The pair (G, D) with the interface every architecture offers the trainer, scorer and exporter:

    * ``generator`` and ``discriminator`` submodules (each gets its own Adam optimizer);
    * ``generator_step_loss(x, (w_adv, w_con, w_lat)) -> (loss, parts, fake)`` and
      ``discriminator_step_loss(x, fake) -> (loss, parts)`` with ``parts["d"]`` the D loss;
    * ``terms(x) -> (x̂, a, b)``: the reconstruction and the two vectors whose squared distance is
      the latent term of the score; ``default_score``: the score formulation used when the
      config does not choose one (mode, λ, pool).
    """

    #: The score used when the config does not say, "rec+bank": s = 0.25·rec + 0.75·bank, both terms standardised
    #: with the normal validation statistics, rec the maximum of the 3×3 box-smoothed map (λ 1: no latent term),
    #: bank the gaussian bank (model/bank.py): the Mahalanobis distance of the generator encoder's 2×2 map to the
    #: Gaussian of the training images' maps (at most 4,096 images). Measured in benchmarks/results/study_bank_gauss.md
    #: (7 splits, 3 seeds) against the nearest bank of the encoder's 4×4 patch features (the head of
    #: benchmarks/results/study_bank_source.md, where it beat the discriminator's) and the two-term score. A config that turns the
    #: bank off (``bank_size = 0``) without a λ gets ``lam_without_bank``: the two-term score (rec and lat
    #: standardised, equal weights, benchmarks/results/peers.md). ``--paper`` restores the paper's.
    default_score: ClassVar[dict[str, Any]] = {"mode": "standardized", "lam": 1.0, "pool": 3, "bank_size": 4096,
                                               "bank_weight": 0.75, "bank_kind": "gaussian", "bank_source": "encoder",
                                               "bank_subsample": "coreset", "lam_without_bank": 0.5}
    #: where the default score was measured (the card's ``score.head`` names it)
    default_score_measured: ClassVar[str] = "benchmarks/results/study_bank_gauss.md"
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.generator = UnetGenerator(cfg)
        self.discriminator = Discriminator(cfg)
        init_weights(self)
        #: spatial positions in f(x): D's penultimate map is 4×4 at every isize (model/bank.py reads it)
        self.feature_patches = 16 if cfg.feature_layer == "penultimate" else 1

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fake = self.generator(x)  # (B, C, H, W)
        if self.training:  # BatchNorm batch statistics: real and fake must not share a batch
            _, f_real = self.discriminator(x)  # (B, nz)
            _, f_fake = self.discriminator(fake)  # (B, nz)
            return fake, f_real, f_fake
        # eval mode: one pass over 2B images (exact: BatchNorm uses running statistics), and only
        # the feature layers: the classifier D(x) is not needed for the score
        feats = self.discriminator.feature(torch.cat([x, fake], 0))  # (2B, nz)
        f_real, f_fake = feats.chunk(2, 0)
        return fake, f_real, f_fake

    def generator_step_loss(
        self, x: torch.Tensor, w: tuple[float, float, float], x_in: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Paper eq. 1-4: w_adv·BCE(D(G(x)), 1) + w_con·L1 + w_lat·L2(f(x), f(G(x))), the BCE on D's logits.

        ``x_in`` (default ``x``) is what the generator sees, e.g. a noisy copy; losses use ``x``."""
        from skipgan_edge.model.losses import generator_loss

        fake = self.generator(x if x_in is None else x_in)
        logit_fake, f_fake = self.discriminator(fake)
        _, f_real = self.discriminator(x)
        loss, parts = generator_loss(logit_fake, x, fake, f_real.detach(), f_fake, *w)
        return loss, parts, fake

    def discriminator_step_loss(self, x: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        from skipgan_edge.model.losses import discriminator_loss

        logit_real, _ = self.discriminator(x)
        logit_fake, _ = self.discriminator(fake)
        return discriminator_loss(logit_real, logit_fake)


class DcganEncoder(nn.Module):
    """DCGAN encoder (GANomaly's GE, E and D body): isize → 4×4 → (B, nz, 1, 1) with a final 4×4 conv."""

    def __init__(self, isize: int, nz: int, nc: int, ndf: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        size, width = isize // 2, ndf
        while size > 4:
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2)]
            width, size = width * 2, size // 2
        layers.append(nn.Conv2d(width, nz, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)  # (B, nz, 1, 1)


class DcganDecoder(nn.Module):
    """DCGAN decoder (GANomaly's GD): (B, nz, 1, 1) → (B, nc, isize, isize) in [-1, 1]."""

    def __init__(self, isize: int, nz: int, nc: int, ngf: int) -> None:
        super().__init__()
        width, size = ngf // 2, 4
        while size != isize:
            width, size = width * 2, size * 2
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, width, 4, 1, 0, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        size = 4
        while size < isize // 2:
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU()]
            width, size = width // 2, size * 2
        layers += [nn.ConvTranspose2d(width, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class GanomalyGenerator(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder1 = DcganEncoder(cfg.isize, cfg.nz, cfg.channels, cfg.ngf)
        self.decoder = DcganDecoder(cfg.isize, cfg.nz, cfg.channels, cfg.ngf)
        self.encoder2 = DcganEncoder(cfg.isize, cfg.nz, cfg.channels, cfg.ngf)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder1(x)  # (B, nz, 1, 1)
        fake = self.decoder(z)  # (B, C, H, W)
        z_hat = self.encoder2(fake)  # (B, nz, 1, 1)
        return fake, z.flatten(1), z_hat.flatten(1)


class GanomalyDiscriminator(nn.Module):
    """DCGAN discriminator: ``features`` (all but the last conv of an encoder) and a 4×4 classifier.

    Like :class:`Discriminator`: ``forward`` gives (the logit of D(x), the features); :meth:`probability` gives D(x)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        enc = DcganEncoder(cfg.isize, 1, cfg.channels, cfg.ndf)
        layers = list(enc.main.children())
        self.features = nn.Sequential(*layers[:-1])  # (B, C, 4, 4)
        self.classifier = nn.Sequential(layers[-1], nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(x)
        return self.classifier[0](feat).flatten(), feat  # the logit (B,); the Sigmoid is for probability()

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        """D(x) = sigmoid(logit), shape (B,)."""
        return torch.sigmoid(self.forward(x)[0])


class Ganomaly(nn.Module):
    """GANomaly (Akçay, Atapour-Abarghouei, Breckon, ACCV 2018): encoder-decoder-encoder generator.

    Losses: generator w_adv·‖f(x) − f(x̂)‖² (feature matching on D's features) + w_con·‖x − x̂‖₁
    + w_lat·‖z − ẑ‖² (the encoder loss); discriminator BCE on real and fake. Score: the latent
    distance mean((z − ẑ)²) (paper formulation with λ = 0: no reconstruction term); anomaly map: the
    reconstruction error, as for every architecture. Same contract as :class:`SkipGANomaly`.
    """

    #: Measured best for GANomaly in the peers harness: both terms standardised with the normal
    #: validation statistics, equal weights, reconstruction as the max of the 3×3 smoothed map; no feature bank.
    default_score: ClassVar[dict[str, Any]] = {"mode": "standardized", "lam": 0.5, "pool": 3, "bank_size": 0,
                                               "bank_source": "discriminator", "bank_sources": ("discriminator",),
                                               "bank_kind": "nearest", "bank_kinds": ("nearest",)}
    default_score_measured: ClassVar[str] = "benchmarks/results/peers.md"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.generator = GanomalyGenerator(cfg)
        self.discriminator = GanomalyDiscriminator(cfg)
        init_weights(self)

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.generator(x)  # type: ignore[no-any-return]

    def generator_step_loss(
        self, x: torch.Tensor, w: tuple[float, float, float], x_in: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        from skipgan_edge.model.losses import l1, l2

        fake, z, z_hat = self.generator(x if x_in is None else x_in)
        _, f_fake = self.discriminator(fake)
        _, f_real = self.discriminator(x)
        adv, con, lat = l2(f_real.detach(), f_fake), l1(fake, x), l2(z_hat, z)
        total = w[0] * adv + w[1] * con + w[2] * lat
        return total, {"g_adv": adv.item(), "g_con": con.item(), "g_lat": lat.item(), "g": total.item()}, fake

    def discriminator_step_loss(self, x: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        from skipgan_edge.model.losses import discriminator_loss

        logit_real, _ = self.discriminator(x)
        logit_fake, _ = self.discriminator(fake)
        return discriminator_loss(logit_real, logit_fake)


ARCHITECTURES: dict[str, type[nn.Module]] = {"skipganomaly": SkipGANomaly, "ganomaly": Ganomaly}


def default_score(arch: str) -> dict[str, Any]:
    """The architecture's default score formulation: ``mode``, ``lam``, ``pool``, ``bank_size`` (and, where they are
    not ScoreConfig's, ``bank_weight``, ``bank_subsample``; ``lam_without_bank``: λ when a config turns the bank off)."""
    cls: Any = ARCHITECTURES.get(arch, SkipGANomaly)
    return dict(cls.default_score)


def head_name(lam: float, bank_size: int, bank_weight: float, mode: str = "standardized", pool: int = 3) -> str:
    """A score head's short name: the terms it weighs above zero, joined by ``+`` (``rec+bank``, ``rec+lat``,
    ``rec+lat+bank``), or ``paper`` for the paper's (raw terms, λ 0.9, the mean map, no bank)."""
    if mode == "paper" and lam == 0.9 and pool == 0 and bank_size == 0:
        return "paper"
    w = bank_weight if bank_size > 0 else 0.0
    terms = [t for t, weight in (("rec", (1 - w) * lam), ("lat", (1 - w) * (1 - lam)), ("bank", w)) if weight > 0]
    return "+".join(terms)


def head_record(arch: str, score: Any, lam: float) -> dict[str, Any]:
    """The card's ``score.head``: the head's name, whether it is the architecture's default, where that default was
    measured and, for another head, the score settings that differ from it. ``score`` is a validated
    :class:`~skipgan_edge.config.ScoreConfig`; ``lam`` the λ in use (``select_lam`` may have chosen it)."""
    from skipgan_edge.config import ScoreConfig

    cls: Any = ARCHITECTURES.get(arch, SkipGANomaly)
    d = {**{k: getattr(ScoreConfig(), k) for k in ("bank_weight", "bank_subsample")}, "bank_source": "discriminator",
         "bank_kind": "nearest", **cls.default_score}
    bank = int(score.bank_size or 0)
    used = {"mode": score.mode, "lam": float(lam), "pool": int(score.pool or 0), "bank_size": bank}
    if bank > 0:  # the bank's weight and subsampling only matter with a bank
        used.update(bank_weight=float(score.bank_weight), bank_subsample=score.bank_subsample,
                    bank_source=score.bank_source or d["bank_source"], bank_kind=score.bank_kind or d["bank_kind"])
        if used["bank_kind"] == "gaussian":  # a gaussian bank is not subsampled by coreset: the setting does not apply
            used["bank_subsample"] = d.get("bank_subsample")
    differs = sorted(k for k, v in used.items() if v != d.get(k))
    default_name = head_name(float(d["lam"]), int(d.get("bank_size", 0)), float(d["bank_weight"]), d["mode"], int(d["pool"]))
    out: dict[str, Any] = {"name": head_name(float(lam), bank, float(score.bank_weight), str(score.mode), int(score.pool or 0)),
                           "default": not differs, "measured_in": cls.default_score_measured}
    if differs:
        out.update(default_name=default_name, differs=differs)
    return out



def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the architecture named by ``cfg.arch``."""
    from skipgan_edge.errors import ConfigError

    try:
        cls = ARCHITECTURES[cfg.arch]
    except KeyError:
        raise ConfigError(f"unknown arch {cfg.arch!r}; known: {', '.join(ARCHITECTURES)}") from None
    return cls(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
