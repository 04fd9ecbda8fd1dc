"""Data: character corpora (download, cache, checksum, split, tokenizer) and the reversal task."""

from .errors import DataError

__all__ = ["DataError"]
