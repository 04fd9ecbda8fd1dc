"""Data: character corpora (download, cache, checksum, split, tokenizer) and the reversal task."""
