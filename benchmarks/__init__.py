"""Throughput of sonar_jax against PyTorch peers on the same weights, in the same run:
`python -m benchmarks --suite cpu|gpu` (see README.md)."""
