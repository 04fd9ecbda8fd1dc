"""Character-level text corpora: download with checksum, cache, read, tokenize, split, batch.

Shapes: B batch, T block (context) length, N tokens in a split.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from contextlib import suppress
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import DataError
from ..files import umasked

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_NAME = "tinyshakespeare.txt"


def cache_dir() -> Path:
    """$SCRATCHFORMER_CACHE, else the platform's per-user cache folder."""
    if os.environ.get("SCRATCHFORMER_CACHE"):
        return Path(os.environ["SCRATCHFORMER_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "scratchformer"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "scratchformer" / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "scratchformer"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: Path, sha256: str, *, timeout: float = 60.0, if_unreachable: str = "") -> Path:
    """Fetch `url` to `dest` atomically (temp file in the same folder, fsync, rename),
    verifying its sha256. A cached file is re-verified; a mismatch is an error.
    if_unreachable: added to the error where the download fails (what to do instead)."""
    dest = Path(dest)
    if dest.exists():
        got = sha256_file(dest)
        if got != sha256:
            raise DataError(f"cached file {dest} has sha256 {got}, expected {sha256}; delete it to re-download")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    for chunk in iter(lambda: resp.read(1 << 16), b""):
                        h.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise DataError(f"download of {url} failed: HTTP {e.code} {e.reason}{if_unreachable}") from None
            except (urllib.error.URLError, OSError) as e:
                raise DataError(f"download of {url} failed: {getattr(e, 'reason', e)}{if_unreachable}") from None
            out.flush()
            with suppress(PermissionError):  # mkstemp's file is private; vfat has no modes
                os.fchmod(out.fileno(), umasked(0o666))
            os.fsync(out.fileno())
        if h.hexdigest() != sha256:
            raise DataError(f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def shakespeare_path(url: str = SHAKESPEARE_URL) -> Path:
    """Tiny Shakespeare in the cache, downloaded and verified on first use. Without the
    internet the error says how to train on a copy (--data FILE) instead."""
    return download(url, cache_dir() / SHAKESPEARE_NAME, SHAKESPEARE_SHA256,
                    if_unreachable=" (an LM without --data trains on Tiny Shakespeare; with a copy at hand, "
                                   "pass --data FILE)")


def file_identity(path) -> dict:
    """{"path": absolute path, "sha256": of its bytes}: how a run records its text file."""
    p = Path(path).resolve()
    return {"path": str(p), "sha256": sha256_file(p)}


def read_text(path) -> str:
    """Read a UTF-8 text file, with a one-line error for anything that is not one."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file", option="data")
    if p.is_dir():
        raise DataError(f"{p} is a folder; give a UTF-8 text file", option="data")
    raw = p.read_bytes()
    if not raw:
        raise DataError(f"{p} is empty; give a UTF-8 text file", option="data")
    if b"\x00" in raw:
        raise DataError(f"{p} looks binary (it contains NUL bytes); give a UTF-8 text file", option="data")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not UTF-8 (bad byte at offset {e.start}); give a UTF-8 text file", option="data") from None


class CharTokenizer:
    """Characters <-> ids; the vocabulary is the sorted set of characters of a text."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or not chars:
            raise DataError("tokenizer vocabulary must be a non-empty string of distinct characters")
        self.chars = chars
        points = np.array([ord(c) for c in chars])
        self._ids = np.full(points.max() + 2, -1, np.int32)  # id by code point; -1: none (the last
        self._ids[points] = np.arange(len(chars))             # entry stands for every larger one)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, piece: int = 1 << 22) -> np.ndarray:
        """The id of every character, looked up by code point in numpy, `piece`
        characters at a time: several times faster than a Python loop (BENCHMARKS.md,
        "Beam search and tokenizing")."""
        out, unknown = np.empty(len(text), np.int32), set()
        for lo in range(0, len(text), piece):
            points = np.frombuffer(text[lo:lo + piece].encode("utf-32-le", "surrogatepass"), np.uint32)
            ids = self._ids[np.minimum(points, len(self._ids) - 1)]
            if (ids < 0).any():
                unknown.update(np.unique(points[ids < 0]).tolist())
            out[lo:lo + len(points)] = ids
        if unknown:
            raise DataError(f"{_characters(''.join(map(chr, sorted(unknown))))} not in the model's vocabulary "
                            f"({len(self.chars)} characters: {json.dumps(self.chars)})")
        return out

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).tolist())

    kind = "char"

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": self.chars})

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of each id's character (bits per byte divides by their sum)."""
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in self.chars], np.int64)


def named_characters(chars, most: int = 8) -> str:
    """"'x', 'y', 'z'" for an error message, naming at most `most` (then "...")."""
    return ", ".join(repr(c) for c in chars[:most]) + (", ..." if len(chars) > most else "")


def _characters(chars: str) -> str:
    """"character 'x' is" / "2 characters ('x', 'y') are"."""
    shown = named_characters(chars)
    return f"character {shown} is" if len(chars) == 1 else f"{len(chars)} characters ({shown}) are"


def split(ids: np.ndarray, val_fraction: float):
    """First (1 - val_fraction) for training, the rest for validation."""
    n = int(len(ids) * (1.0 - val_fraction))
    return ids[:n], ids[n:]


def sample_batch(key, data_N, *, batch: int, block: int):
    """Random windows of a device-resident token array: inputs and next-token targets, BxT."""
    return windows(data_N, random_starts(key, data_N.shape[0], block=block, batch=batch), block)


def random_starts(key, n_tokens: int, *, block: int, batch: int):
    """Where B windows of block+1 tokens start under data.order=random: uniform offsets."""
    return jax.random.randint(key, (batch,), 0, n_tokens - block)


def windows(data_N, starts, block: int) -> dict:
    """The windows of block+1 tokens of a device-resident array at `starts` (any shape
    ...): inputs and next-token targets, ... x T."""
    w = data_N[starts[..., None] + jnp.arange(block + 1)]
    return {"inputs": w[..., :-1], "targets": w[..., 1:]}


# data.order=epoch: every epoch cuts the text into windows of `block` tokens from a random
# shift in [0, block) and visits each once, in an order of its own; step s's rows are
# windows s*B .. s*B+B-1 of that endless sequence. Epoch e's order comes from
# fold_in(fold_in(rng, ORDER_STREAM), e): a stream no step's key uses (steps < 2**31).
ORDER_STREAM = 2**32 - 1


def epoch_windows(n_tokens: int, block: int) -> int:
    """Windows of block+1 tokens an epoch visits: from a shift s < block, window i starts
    at s + i*block, the last reading up to n_tokens - 1."""
    return (n_tokens - block) // block


def epoch_starts(rng, step, n_tokens: int, *, block: int, batch: int):
    """Where step's B windows start under data.order=epoch (a pure function of the run's
    key and the step, so a resumed run reads the same). Needs epoch_windows >= 1 and
    epoch_windows * batch < 2**31 (int32), which LMTask checks."""
    n = epoch_windows(n_tokens, block)
    q, r = step // n, step % n
    offset = r * batch + jnp.arange(batch)  # row i is window (q*n + r)*B + i = (q*B)*n + offset
    epoch, pos = q * batch + offset // n, offset % n

    def order(e):
        k_perm, k_shift = jax.random.split(jax.random.fold_in(jax.random.fold_in(rng, ORDER_STREAM), e))
        return jax.random.randint(k_shift, (), 0, block) + jax.random.permutation(k_perm, n) * block

    if batch > n:  # a short text: a batch spans several epochs, each row drawn from its own
        return jax.vmap(lambda e, p: order(e)[p])(epoch, pos)
    first, second = order(epoch[0]), order(epoch[0] + 1)  # B <= n: a batch spans at most two epochs
    return jnp.where(epoch == epoch[0], first[pos], second[pos])


def eval_windows(val_N: np.ndarray, block: int, limit: int = 0) -> dict:
    """Non-overlapping windows scoring every validation target exactly once
    (`eval_starts`), as {"inputs","targets","weights"}: W x T."""
    starts, weights = eval_starts(len(val_N), block, limit)
    return windows_at(val_N, starts, weights, block)


def eval_block(n_tokens: int, block: int) -> int:
    """The length of the windows that score a split of `n_tokens` (`eval_starts`): the
    model's `block`, or, for a split shorter than one window of it (block + 1 tokens),
    n_tokens - 1: the whole split in one shorter window, every token after the first
    predicted from all the tokens before it (as transformers' loss on input_ids=labels)."""
    if n_tokens < 2:
        raise DataError(f"{n_tokens} token(s) leave nothing to score; scoring needs at least 2")
    return min(block, n_tokens - 1)


def eval_starts(n_tokens: int, block: int, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Where the evaluation windows of a split of `n_tokens` start, and their weights W x T.

    Windows start at 0, T, 2T...; a last window ending at the split's end covers
    the remainder, with weight only on targets no earlier window scored.
    With limit > 0, only `limit` evenly spaced full windows (for quick periodic
    evaluation)."""
    n = n_tokens - 1  # number of targets
    if n < block:
        raise DataError(f"validation split has {n} targets, fewer than one block ({block}); "
                        "use more text or a smaller model.block_size")
    starts = np.arange(0, n - block + 1, block)
    weights = np.ones((len(starts), block), np.float32)
    covered = int(starts[-1]) + block
    if covered < n:
        last = np.zeros((1, block), np.float32)
        last[0, covered - (n - block):] = 1.0
        starts, weights = np.append(starts, n - block), np.concatenate([weights, last])
    if limit and limit < len(starts):
        pick = np.linspace(0, len(starts) - 2 if covered < n else len(starts) - 1, limit).astype(int)
        starts, weights = starts[pick], np.ones((limit, block), np.float32)
    return starts, weights


def windows_at(tokens_N, starts_W, weights_WxT, block: int) -> dict:
    """The windows of `tokens_N` (an array or a memmap) at `starts`: inputs and targets W x T."""
    w = np.asarray(tokens_N[np.asarray(starts_W)[:, None] + np.arange(block + 1)[None, :]], np.int32)
    return {"inputs": w[:, :-1], "targets": w[:, 1:], "weights": weights_WxT}
