"""sonar_jax: SONAR sentence embeddings (text + speech) in JAX/Flax, trainable and torch-free."""

from setuptools import find_packages, setup

setup(
    name="sonar_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of Meta's SONAR: load, run and train without torch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sonar_jax", "sonar_jax.*"]),
    package_data={"sonar_jax": ["assets/*.txt"]},
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.4",
        "sentencepiece>=0.2",
        "ml-collections>=1.0",
        "ml_dtypes>=0.5",
        "numpy>=1.26",
        "tqdm>=4.60",
        "grain>=0.2.10",
        "tensorboardX>=2.6",
        "sacrebleu>=2.4",
        "matplotlib>=3.7",  # the main job's report.png
    ],
    extras_require={
        # Audio decoding and resampling for the speech pipelines and speech training data.
        "audio": ["librosa>=0.10", "soundfile>=0.12"],
        # Parquet inputs and shards for `sonar-jax embed` / `mine`.
        "parquet": ["pyarrow>=14"],
        "test": ["pytest>=8", "librosa>=0.10", "soundfile>=0.12", "pyarrow>=14"],
        "tpu": ["libtpu"],  # the TPU compiler, for launch/aot_compile.py on any host
    },
    entry_points={"console_scripts": ["sonar-jax=sonar_jax.cli:console"]},
)
