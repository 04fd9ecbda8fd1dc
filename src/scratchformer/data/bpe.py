"""GPT-2's byte-level BPE through Hugging Face `tokenizers` (a Rust library: training a
BPE by hand is not what this project teaches). Text is split GPT-2's way, every byte
is a symbol (so any text encodes, no unknown token), and merges join frequent pairs.

A BpeTokenizer is trained on the user's own text with a chosen vocabulary size, or read
from GPT-2's own `vocab.json` + `merges.txt`; it is saved with a run as `tokenizer.json`
(the `tokenizers` format), so that `sample` and `eval` encode and decode as training did.
"""

from __future__ import annotations

import json
import re

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import DataError
from .hf_tokenizer import HFTokenizer
from .text import CharTokenizer

END_OF_TEXT = "<|endoftext|>"  # GPT-2's document separator, the last id of its vocabulary
MIN_VOCAB = 257                # the 256 byte symbols and <|endoftext|>
MAX_VOCAB = 1 << 20
ENCODE_PIECE = 1 << 20         # characters per piece handed to the Rust encoder (all cores)
_PIECE_END = re.compile(r"\n(?=\S)")


def _byte_level(model):
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


class BpeTokenizer:
    """Byte-level BPE: encode(str) -> int32 ids, decode(ids) -> str, len() = vocabulary size."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self._tok = tokenizer

    @classmethod
    def train(cls, texts, vocab_size: int) -> "BpeTokenizer":
        """Learn `vocab_size` symbols (>= 257) from an iterable of strings."""
        if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
            raise DataError(f"vocab_size={vocab_size} must be in [{MIN_VOCAB}, {MAX_VOCAB}] (256 bytes, "
                            f"{END_OF_TEXT} and the merges)", option="vocab_size")
        tok = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_gpt2(cls, vocab_json, merges_txt) -> "BpeTokenizer":
        """GPT-2's tokenizer from its published `vocab.json` and `merges.txt`."""
        try:
            tok = _byte_level(models.BPE.from_file(str(vocab_json), str(merges_txt)))
        except Exception as e:  # the Rust side raises plain Exceptions for unreadable files
            raise DataError(f"{vocab_json} and {merges_txt} are not a BPE vocabulary and merges: "
                            f"{str(e).splitlines()[0]}") from None
        if tok.token_to_id(END_OF_TEXT) is not None:
            tok.add_special_tokens([END_OF_TEXT])  # GPT-2's separator: never split, and not text
        return cls(tok)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> "BpeTokenizer":
        try:
            return cls(Tokenizer.from_str(text))
        except Exception as e:
            raise DataError(f"{source} is not a tokenizer this version reads: {str(e).splitlines()[0]}") from None

    def to_json(self) -> str:
        return self._tok.to_str()

    def save_vocab_merges(self, folder) -> None:
        """GPT-2's two files, vocab.json and merges.txt, of this tokenizer into `folder`."""
        self._tok.model.save(str(folder))

    def __len__(self) -> int:
        return self._tok.get_vocab_size()

    def id_of(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, encoded in pieces in parallel. A piece ends after a newline that
        is followed by a non-space character: GPT-2's pre-tokenizer splits there too, so
        the ids are those of the whole text."""
        pieces, start = [], 0
        while start < len(text):
            m = _PIECE_END.search(text, start + ENCODE_PIECE)
            end = m.end() if m else len(text)
            pieces.append(text[start:end])
            start = end
        ids = [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(pieces, add_special_tokens=False)]
        return np.concatenate(ids) if ids else np.zeros(0, np.int32)

    def decode(self, ids) -> str:
        return self._tok.decode(np.asarray(ids).tolist(), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each id stands for (0 for <|endoftext|> and other special
        tokens, which are not text): bits per byte divides by their sum."""
        table = np.zeros(len(self), np.int64)
        special = {t.content for t in self._tok.get_added_tokens_decoder().values()}
        for token, i in self._tok.get_vocab().items():
            if token not in special:
                table[i] = len(token)  # one byte-level symbol per byte
        return table


def tokenizer_from_json(text: str, source: str = "tokenizer.json"):
    """A tokenizer saved with to_json: ours for characters and for a model's own (HFTokenizer),
    the `tokenizers` format for BPE."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise DataError(f"{source} is not JSON: {str(e).splitlines()[0]}") from None
    if isinstance(d, dict) and d.get("kind") == CharTokenizer.kind:
        if not isinstance(d.get("chars"), str):
            raise DataError(f"{source}: a character tokenizer needs its \"chars\"")
        return CharTokenizer(d["chars"])
    if isinstance(d, dict) and d.get("kind") == HFTokenizer.kind:
        return HFTokenizer.from_saved(d, source)
    return BpeTokenizer.from_json(text, source)


def end_of_text(tok) -> int | None:
    """The id that ends a text: a model's own EOS, <|endoftext|> for a BPE that has it; None
    for characters. Token files put it between documents; a sample stops where it is drawn."""
    if tok.kind == HFTokenizer.kind:
        return tok.eos_id
    return tok.id_of(END_OF_TEXT) if tok.kind == BpeTokenizer.kind else None
