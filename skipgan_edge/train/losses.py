"""The training losses live with the model: :mod:`skipgan_edge.model.losses` (re-exported here)."""

from skipgan_edge.model.losses import bce, discriminator_loss, generator_loss, l1, l2

__all__ = ["bce", "discriminator_loss", "generator_loss", "l1", "l2"]
