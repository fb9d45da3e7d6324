"""mnistjax: the studies of four MNIST / Fashion-MNIST notebooks as reproducible JAX/Flax runs."""

__version__ = "0.1.0"
