"""Datasets: MVTec-style folders, Fashion-MNIST leave-one-class-out, synthetic defect textures."""
