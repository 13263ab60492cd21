"""Training: losses and the GAN loop."""
