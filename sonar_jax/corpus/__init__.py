"""Embedding whole corpora: inputs (`inputs`), shards and manifests on disk (`shards`), and the
resumable run split over the processes of a job (`embed`). Not to be confused with
`sonar_jax.data.corpora`, which builds training corpora."""
