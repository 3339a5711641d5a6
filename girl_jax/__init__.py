"""girl_jax: GIRL (Generative Job Recommendation with LLMs) in JAX/Flax."""

__version__ = "0.1.0"
