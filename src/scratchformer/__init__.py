"""scratchformer: Transformers from scratch in pure JAX, and a tool that trains them."""

__version__ = "0.2.0"
