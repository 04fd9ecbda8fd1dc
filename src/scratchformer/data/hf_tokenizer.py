"""A model's own tokenizer as Hugging Face ships it: any `tokenizer.json` that `tokenizers`
reads (byte-level BPE as in GPT-2, Llama 3, Qwen2 and SmolLM2; SentencePiece-style BPE
with byte fallback as in Llama 2 and TinyLlama), with the model's BOS and EOS tokens and
its rule for adding them, so that encode(text) gives the ids that transformers'
tokenizer(text) gives, and a model sees its text as it was trained to.

The rule is transformers' (5.x, PreTrainedTokenizerBase.from_pretrained): a folder with
a tokenizer.json is encoded as its post-processor says (a TemplateProcessing "<s> $A"
prepends a BOS, Llama 3's its <|begin_of_text|>, a ByteLevel one or none adds nothing);
add_bos_token and add_eos_token in tokenizer_config.json are dropped. (transformers 4's
LlamaTokenizerFast took add_bos_token instead, true unless set; in the published Llama
and Mistral folders the two agree.) BOS and EOS are tokenizer_config.json's bos_token and
eos_token, else generation_config.json's ids, else config.json's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from ..errors import DataError

BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")  # byte fallback: one byte of text that no symbol covers
PROBE = "a b"  # a text whose encoding shows what the post-processor adds around it
# Characters per piece a long text is encoded in: `tokenizers` holds ~430 bytes per token
# of an encoding (offsets, strings, masks), GBs for a text of tens of MB encoded whole.
ENCODE_PIECE = 1 << 20
_LINE_START = re.compile(r"(?<=\n)(?=\S)")  # after a newline, at a character that is not a space


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} holds {type(d).__name__}, not a JSON object")
    return d


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or an AddedToken's
    {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


class HFTokenizer:
    """A `tokenizers.Tokenizer` with its BOS/EOS ids and whether encode() adds them:
    encode(str) -> int32 ids, decode(ids) -> str (without the BOS encode adds), len().
    `vocab_size`: the model's ids, where it has more than the tokenizer (a table padded to
    a round size, as Qwen2's): the ids past the tokenizer's stand for no text."""

    kind = "hf"

    def __init__(self, tokenizer: Tokenizer, *, bos_id: int | None, eos_id: int | None, add_bos: bool,
                 add_eos: bool, vocab_size: int | None = None):
        own = tokenizer.get_vocab_size()
        if vocab_size is not None and vocab_size < own:
            raise DataError(f"the tokenizer has {own:,} ids, more than the model's vocab_size={vocab_size:,}")
        for name, i, add in (("BOS", bos_id, add_bos), ("EOS", eos_id, add_eos)):
            if add and i is None:
                raise DataError(f"the tokenizer adds a {name} but names no {name} token")
            if i is not None and not 0 <= i < own:
                raise DataError(f"the {name} id {i} is outside the tokenizer's {own:,} ids")
        self._tok = tokenizer
        self.bos_id, self.eos_id, self.add_bos, self.add_eos = bos_id, eos_id, add_bos, add_eos
        self.vocab_size = own if vocab_size is None else vocab_size

    # ------------------------------------------------------------ reading and writing
    @classmethod
    def from_folder(cls, folder, fallback: dict | None = None, vocab_size: int | None = None) -> "HFTokenizer":
        """The tokenizer of a Hugging Face model folder (tokenizer.json, tokenizer_config.json,
        generation_config.json). `fallback`: {"bos_token_id", "eos_token_id"} of its
        config.json, for ids neither of the others names; `vocab_size`: its model's."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"{folder} has no tokenizer.json (the tokenizers file transformers saves beside the "
                            "model; a folder with tokenizer.model alone must be saved again with a fast tokenizer)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exceptions
            raise DataError(f"{path} is not a tokenizer this version of tokenizers reads: "
                            f"{str(e).splitlines()[0]}") from None
        config = _read_json(folder / "tokenizer_config.json")
        ids = {**(fallback or {}), **_read_json(folder / "generation_config.json")}
        found = {}
        for role in ("bos", "eos"):
            text = _token_text(config.get(f"{role}_token"))
            i = tok.token_to_id(text) if isinstance(text, str) else None
            if isinstance(text, str) and i is None:
                raise DataError(f"{folder / 'tokenizer_config.json'}: {role}_token={text!r} is not in tokenizer.json")
            if i is None:
                i = ids.get(f"{role}_token_id")
                i = i[0] if isinstance(i, list) and i else i  # generation_config: several ids stop generation
            found[role] = i if type(i) is int else None
        add_bos, add_eos = cls._added_by_post_processor(tok, found, path)
        return cls(tok, bos_id=found["bos"], eos_id=found["eos"], add_bos=add_bos, add_eos=add_eos,
                   vocab_size=vocab_size)

    @staticmethod
    def _added_by_post_processor(tok: Tokenizer, found: dict, path) -> tuple[bool, bool]:
        """Whether tokenizer.json's post-processor adds a BOS and an EOS around a text; the
        tokens it adds are the BOS and EOS (in `found`). A DataError for one that adds more."""
        plain = tok.encode(PROBE, add_special_tokens=False).ids
        full = tok.encode(PROBE).ids
        at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), None)
        before, after = (None, None) if at is None else (full[:at], full[at + len(plain):])
        adds = []
        for role, extra in (("bos", before), ("eos", after)):
            if extra is None or len(extra) > 1:
                raise DataError(f"{path}: its post_processor turns {plain} into {full}; this reads tokenizers that "
                                "add at most one token before a text (a BOS) and one after it (an EOS)")
            if extra:
                found[role] = extra[0]
            adds.append(bool(extra))
        return adds[0], adds[1]

    @classmethod
    def from_saved(cls, d: dict, source: str) -> "HFTokenizer":
        """The tokenizer of to_json's text, parsed (`d`)."""
        try:
            tok = Tokenizer.from_str(json.dumps(d["tokenizer"]))
            fields = {k: d[k] for k in ("bos_id", "eos_id", "add_bos", "add_eos", "vocab_size")}
        except KeyError as e:
            raise DataError(f"{source}: a {cls.kind} tokenizer needs its {e}") from None
        except Exception as e:
            raise DataError(f"{source} is not a tokenizer this version reads: {str(e).splitlines()[0]}") from None
        if not all(v is None or type(v) is int for v in (fields["bos_id"], fields["eos_id"])) or not all(
                type(fields[k]) is bool for k in ("add_bos", "add_eos")) or type(fields["vocab_size"]) is not int:
            raise DataError(f"{source}: bos_id and eos_id must be integers or null, add_bos and add_eos true or "
                            "false, vocab_size an integer")
        return cls(tok, **fields)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                           "eos_id": self.eos_id, "add_bos": self.add_bos, "add_eos": self.add_eos,
                           "tokenizer": json.loads(self._tok.to_str())})

    def token(self, i: int | None) -> str | None:
        return None if i is None else self._tok.id_to_token(i)

    def hf_files(self) -> dict[str, str]:
        """tokenizer.json and tokenizer_config.json for transformers: the tokenizer whose
        post-processor says the rule encode() follows, and its BOS and EOS (add_bos_token and
        add_eos_token say the rule too, for people and for transformers 4's LlamaTokenizerFast)."""
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": self.token(self.bos_id),
                  "eos_token": self.token(self.eos_id), "add_bos_token": self.add_bos, "add_eos_token": self.add_eos,
                  "clean_up_tokenization_spaces": False}
        return {"tokenizer.json": self._tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}

    # ------------------------------------------------------------ use
    def __len__(self) -> int:
        return self.vocab_size

    def id_of(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, *, start: bool = True, end: bool = True, context: str = "") -> np.ndarray:
        """Ids of `text`, with the BOS before it (start) and the EOS after it (end) where
        the model's tokenizer adds them: transformers' tokenizer(text). A piece of a longer
        text: start=False if it is not the beginning, end=False if not the end, and
        `context` the line before it, which its first tokens are encoded after (a
        SentencePiece-style tokenizer marks the beginning of a text)."""
        body = self._body(text, context)
        ids = [self.bos_id] * (start and self.add_bos) + body + [self.eos_id] * (end and self.add_eos)
        return np.asarray(ids, np.int32)

    def _body(self, text: str, context: str) -> list[int]:
        """The ids of `text` alone, a piece of about ENCODE_PIECE characters at a time
        (in parallel), each encoded after the line before it and those ids dropped. Pieces
        start at lines where no token spans the line break (checked): the ids are those
        of the whole text."""
        cuts = [0]
        at = ENCODE_PIECE
        while at < len(text) and (m := _LINE_START.search(text, at)):
            cut = m.start()
            before = text[text.rfind("\n", 0, cut - 1) + 1:cut]
            after = text[cut:text.find("\n", cut) + 1 or len(text)]
            alone = self._tok.encode(before, add_special_tokens=False).ids
            if self._tok.encode(before + after, add_special_tokens=False).ids[:len(alone)] == alone:
                cuts.append(cut)
                at = cut + ENCODE_PIECE
            else:
                at = cut + 1
        cuts.append(len(text))
        pieces = [text[a:b] for a, b in zip(cuts, cuts[1:])]
        contexts = [context] + [text[text.rfind("\n", 0, cut - 1) + 1:cut] for cut in cuts[1:-1]]
        joined = self._tok.encode_batch([c + p for c, p in zip(contexts, pieces)], add_special_tokens=False)
        alone = self._tok.encode_batch(contexts, add_special_tokens=False)
        return [i for j, a in zip(joined, alone) for i in j.ids[len(a.ids):]]

    def decode(self, ids) -> str:
        """The text of `ids` (special tokens shown), without the BOS that encode put first."""
        ids = np.asarray(ids).tolist()
        if self.add_bos and ids[:1] == [self.bos_id]:
            ids = ids[1:]
        own = self._tok.get_vocab_size()
        return self._tok.decode([i for i in ids if i < own], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Bytes of text each id stands for, which bits per byte divides by: 0 for special
        tokens; one per symbol of a byte-level BPE (each stands for a byte); one for a byte
        fallback <0xNN>; else the UTF-8 bytes of the symbol with SentencePiece's "▁" read as
        a space (so the space SentencePiece puts before a text counts as a byte)."""
        table = np.zeros(len(self), np.int64)
        spec = json.loads(self._tok.to_str())
        byte_level = "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")])
        byte_fallback = bool((spec.get("model") or {}).get("byte_fallback"))
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            if byte_level:
                table[i] = len(token)
            elif byte_fallback and BYTE_TOKEN.fullmatch(token):
                table[i] = 1
            else:
                table[i] = len(token.replace("\u2581", " ").encode("utf-8"))
        for i, added in self._tok.get_added_tokens_decoder().items():
            table[i] = 0 if added.special else len(added.content.encode("utf-8"))
        return table
