"""Token files: a corpus tokenized once (`scratchformer prepare`, as nanoGPT's prepare.py)
into a folder that training reads through a memmap:

  train.bin, val.bin   the token ids, little-endian uint16 where the vocabulary fits, else uint32
  tokenizer.json       the tokenizer (data.bpe.tokenizer_from_json reads it)
  meta.json            format, tokenizer kind and size, dtype, and per split its token count,
                       file size, sha256 and the bytes of text it stands for; the sources'
                       paths, sizes and sha256

The folder is written whole or not at all (built beside its place, then renamed).
Opening one checks every file against meta.json before anything is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import atomic_folder, missing_parents
from ..progress import counter
from .bpe import BpeTokenizer, end_of_text, tokenizer_from_json
from .text import CharTokenizer, sha256_file

FORMAT = 1
FILES = ("train.bin", "val.bin", "tokenizer.json", "meta.json")
TOKENIZERS = ("char", "bpe")
READ_CHARS = 1 << 24  # characters read and tokenized at a time


def dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def source_files(paths) -> list[Path]:
    """The text files to read: each path, or the *.txt files under a folder (sorted). Their
    errors name no option: `prepare` takes the texts as arguments, not through --data."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*.txt") if f.is_file())
            if not found:
                raise DataError(f"{p} is a folder without .txt files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file")
    return files


def _pieces(path: Path):
    """The text of a UTF-8 file, read READ_CHARS characters at a time, in pieces that end
    after a newline followed by a non-space character (where GPT-2's pre-tokenizer splits
    too, so a piece's ids are those the whole text would give)."""
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty; give a UTF-8 text file")
    carry = ""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            while block := f.read(READ_CHARS):
                if "\x00" in block:
                    raise DataError(f"{path} looks binary (it contains NUL bytes); give a UTF-8 text file")
                text, cut = carry + block, _last_boundary(carry + block)
                carry = text[cut:]
                if cut:
                    yield text[:cut]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (bad byte near offset {e.start}); give a UTF-8 text file") from None
    if carry:
        yield carry


def _last_boundary(text: str) -> int:
    """The end of the last newline followed by a non-space character, or 0."""
    i = text.rfind("\n", 0, len(text) - 1)
    while i >= 0 and text[i + 1].isspace():
        i = text.rfind("\n", 0, i)
    return i + 1


def _make_tokenizer(files, kind: str, vocab_size: int | None, gpt2):
    if gpt2:
        return BpeTokenizer.from_gpt2(*gpt2)
    if kind == "char":
        chars = set()
        for f in files:
            for piece in _pieces(f):
                chars.update(piece)
        return CharTokenizer("".join(sorted(chars)))
    if vocab_size is None:
        raise DataError("a BPE tokenizer needs a vocabulary size (vocab_size)")
    return BpeTokenizer.train((piece for f in files for piece in _pieces(f)), vocab_size)


def prepare(paths, out, *, tokenizer: str = "char", vocab_size: int | None = None, val_fraction: float = 0.1,
            gpt2=None, progress: bool = False, like=None) -> dict:
    """Tokenize text files (or folders of .txt files) into the token-file folder `out`.
    The last `val_fraction` of the tokens is the validation split. `tokenizer`: "char"
    (the vocabulary of the text) or "bpe" (trained here to `vocab_size`, unless
    `gpt2` = (vocab.json, merges.txt) gives GPT-2's own); `like`, a tokenizer object,
    instead of either (a run's: the data to fine-tune it on). Returns meta.json's content."""
    out = Path(out)
    if out.exists():  # before the texts are read (atomic_folder checks again)
        raise DataError(f"{out} already exists; choose a new folder", option="out")
    missing_parents(out)  # a file in the way: before the texts are read
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction={val_fraction!r} must be in (0, 1)")
    if tokenizer not in TOKENIZERS:
        raise DataError(f"{tokenizer!r} is not one of {', '.join(TOKENIZERS)}", option="tokenizer")
    files = source_files(paths)
    if like is not None and (vocab_size or gpt2):
        raise DataError("a given tokenizer (like) takes no vocab_size or gpt2 files")
    tok = like if like is not None else _make_tokenizer(files, tokenizer, vocab_size, gpt2)
    with atomic_folder(out) as tmp:
        meta = _write(files, tok, tmp, val_fraction, progress)
    return meta


def _separator(tok) -> list[int]:
    """The ids written between two files (documents): GPT-2's <|endoftext|> for a BPE that
    has it, a model's own EOS (where its tokenizer does not end each text with one already)."""
    eot = end_of_text(tok)
    return [] if eot is None or (tok.kind == "hf" and tok.add_eos) else [eot]


def _encoded_pieces(tok, path: Path):
    """(ids, text) of each piece of a file. A model's own tokenizer (kind hf) adds its BOS
    before the first piece and its EOS after the last, where it adds them to a text, and
    encodes each piece after the line before it (HFTokenizer.encode's context)."""
    pieces = _pieces(path)
    piece, first, context = next(pieces, None), True, ""
    while piece is not None:
        following = next(pieces, None)
        try:
            ids = (tok.encode(piece, start=first, end=following is None, context=context) if tok.kind == "hf"
                   else tok.encode(piece))
        except DataError as e:  # a character a given tokenizer (--tokenizer-from) lacks
            raise DataError(f"{path}: {e}") from None
        yield ids, piece
        piece, first, context = following, False, piece[piece.rfind("\n", 0, len(piece) - 1) + 1:]


def _write(files, tok, folder: Path, val_fraction: float, progress: bool) -> dict:
    dtype = dtype_for(len(tok))
    sep = _separator(tok)
    total_bytes = sum(f.stat().st_size for f in files)
    sources = []
    with open(folder / "all.bin", "wb") as all_ids, counter(total_bytes, shown=progress, unit="B",
                                                              desc="tokenizing") as bar:
        for i, f in enumerate(files):
            for ids, piece in _encoded_pieces(tok, f):
                np.asarray(ids, dtype).tofile(all_ids)
                bar.update(len(piece.encode("utf-8", "surrogatepass")))
            if i + 1 < len(files):
                np.asarray(sep, dtype).tofile(all_ids)  # between documents: <|endoftext|> (BPE), EOS (a model's own)
            sources.append({"path": str(f.resolve()), "bytes": f.stat().st_size, "sha256": sha256_file(f)})
    ids = np.memmap(folder / "all.bin", dtype, mode="r")
    n_train = int(len(ids) * (1.0 - val_fraction))  # as text.split divides a text file
    for name, n in (("training", n_train), ("validation", len(ids) - n_train)):
        if n < 2:  # a split of one token has no (input, target) pair
            raise DataError(f"{val_fraction} leaves the {name} split {n} of the text's {len(ids):,} tokens; "
                            "it needs 2 or more (give more text, or another fraction)", option="val_fraction")
    table = tok.token_bytes()
    splits = {}
    for name, part in (("train", ids[:n_train]), ("val", ids[n_train:])):
        path = folder / f"{name}.bin"
        np.asarray(part).tofile(path)
        text_bytes = sum(int(table[part[i:i + (1 << 24)]].sum()) for i in range(0, len(part), 1 << 24))
        splits[name] = {"tokens": len(part), "file_bytes": path.stat().st_size, "text_bytes": text_bytes,
                        "sha256": sha256_file(path)}
    del ids
    (folder / "all.bin").unlink()
    (folder / "tokenizer.json").write_text(tok.to_json())
    meta = {"format": FORMAT, "tokenizer": {"kind": tok.kind, "vocab_size": len(tok)}, "dtype": dtype.name,
            "val_fraction": val_fraction, **splits, "sources": sources}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


class TokenFiles:
    """An opened token-file folder: `tokenizer`, `meta`, and the splits as read-only
    memmaps (`train`, `val`), each checked against meta.json."""

    def __init__(self, folder):
        self.folder = folder = Path(folder)
        if not folder.is_dir():
            raise DataError(f"{folder} is not a token-file folder (scratchformer prepare makes one)", option="data")
        missing = [f for f in FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}; a token-file folder holds {', '.join(FILES)} "
                            "(scratchformer prepare makes one)", option="data")
        self.meta = meta = self._read_meta()
        vocab, dtype = meta["tokenizer"]["vocab_size"], np.dtype(meta["dtype"])
        if np.iinfo(dtype).max < vocab - 1:
            raise DataError(f"{folder}: a vocabulary of {vocab} symbols does not fit {dtype.name}", option="data")
        self.tokenizer = tokenizer_from_json((folder / "tokenizer.json").read_text(), str(folder / "tokenizer.json"))
        if len(self.tokenizer) != vocab:
            raise DataError(f"{folder}: tokenizer.json has {len(self.tokenizer)} symbols, meta.json says {vocab}",
                            option="data")
        for name in ("train", "val"):
            size, want = (folder / f"{name}.bin").stat().st_size, meta[name]["tokens"] * dtype.itemsize
            if size != want:
                raise DataError(f"{folder}: {name}.bin has {size:,} bytes, meta.json's {meta[name]['tokens']:,} "
                                f"{dtype.name} tokens take {want:,}; the file was truncated or changed", option="data")
            setattr(self, name, np.memmap(folder / f"{name}.bin", dtype, mode="r"))

    def _read_meta(self) -> dict:
        path = self.folder / "meta.json"
        try:
            meta = json.loads(path.read_text())
            ok = (meta.get("format") == FORMAT and meta["dtype"] in ("uint16", "uint32")
                  and all(type(meta[s]["tokens"]) is int and meta[s]["tokens"] > 0 for s in ("train", "val"))
                  and type(meta["tokenizer"]["vocab_size"]) is int)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise DataError(f"{path} is not a token-file meta.json of format {FORMAT}", option="data")
        return meta

    def identity(self) -> dict:
        """How a run records its data: the folder and the sha256 of its splits."""
        return {"path": str(self.folder.resolve()),
                "sha256": hashlib.sha256((self.meta["train"]["sha256"] + self.meta["val"]["sha256"]).encode())
                .hexdigest()}
