"""Byte-level BPE (against a naive GPT-2 encoder written out here), token files (prepare,
checks on opening), and training on them: streamed from disk or drawn on the devices,
the same batches either way, on one device or four; bits per byte."""

import json
import math
import re
import shutil

import numpy as np
import pytest

from scratchformer.data import bpe, tokens
from scratchformer.data.bpe import END_OF_TEXT, BpeTokenizer
from scratchformer.data.tokens import TokenFiles, dtype_for, prepare
from scratchformer.errors import DataError, ScratchformerError

from conftest import run_cli

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n  indented 42 lines, 7 times!\n") * 30


def bytes_to_unicode() -> dict:
    """GPT-2's map of the 256 bytes to printable characters (encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# GPT-2's pre-tokenizer pattern, with \p{L} and \p{N} narrowed to ASCII (the texts here are ASCII).
PATTERN = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def naive_encode(text: str, vocab: dict, merges: list) -> list:
    """GPT-2's encoder as published: pre-tokens, their bytes as symbols, then always the
    lowest-ranked merge of an adjacent pair until none applies."""
    rank = {pair: i for i, pair in enumerate(merges)}
    b2u, out = bytes_to_unicode(), []
    for piece in PATTERN.findall(text):
        word = [b2u[b] for b in piece.encode()]
        while len(word) > 1:
            pairs = [(rank.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            best, i = min(pairs)
            if best == math.inf:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        out += [vocab[w] for w in word]
    return out


@pytest.fixture
def gpt2_files(tmp_path):
    """A GPT-2-style vocab.json and merges.txt: the 256 byte symbols, 40 merges learned
    here by counting pairs, and <|endoftext|> last."""
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    words = [[b2u[b] for b in p.encode()] for p in PATTERN.findall(TEXT)]
    merges = []
    for _ in range(40):
        counts = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        pair = max(sorted(counts), key=counts.get)
        merges.append(pair)
        vocab[pair[0] + pair[1]] = len(vocab)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == pair:
                    w[i:i + 2] = [pair[0] + pair[1]]
                i += 1
    vocab[END_OF_TEXT] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return tmp_path / "vocab.json", tmp_path / "merges.txt", vocab, merges


def test_gpt2_files_encode_as_gpt2s_own_algorithm(gpt2_files):
    vocab_json, merges_txt, vocab, merges = gpt2_files
    tok = BpeTokenizer.from_gpt2(vocab_json, merges_txt)
    assert len(tok) == 256 + 40 + 1
    for text in (TEXT, "Speak, speak! 42 times.\n\n  x", "you're all resolved"):
        assert tok.encode(text).tolist() == naive_encode(text, vocab, merges)
        assert tok.decode(tok.encode(text)) == text
    assert tok.token_bytes()[vocab[END_OF_TEXT]] == 0  # a separator, not text
    assert tok.token_bytes()[tok.encode("First")].sum() == 5


def test_encoding_in_pieces_gives_the_ids_of_the_whole(monkeypatch):
    tok = BpeTokenizer.train([TEXT], 300)
    whole = tok.encode(TEXT)
    monkeypatch.setattr(bpe, "ENCODE_PIECE", 7)
    assert (tok.encode(TEXT) == whole).all() and tok.decode(whole) == TEXT
    assert tok.token_bytes()[whole].sum() == len(TEXT.encode())
    again = bpe.tokenizer_from_json(tok.to_json())
    assert (again.encode(TEXT) == whole).all()


def test_prepare_with_a_given_tokenizer_keeps_it(tmp_path):
    """prepare(like=tok) (the command line's --tokenizer-from RUN) writes the splits in that
    tokenizer, a learned BPE here, which a run with it accepts, and decodes them to the text."""
    from scratchformer.runconfig import make_config
    from scratchformer.tasks.lm import LMTask
    tok = BpeTokenizer.train([TEXT], 300)
    (tmp_path / "t.txt").write_text(TEXT[:2000])
    prepare([tmp_path / "t.txt"], tmp_path / "tok", like=tok, val_fraction=0.2)
    files = TokenFiles(tmp_path / "tok")
    assert files.tokenizer.to_json() == tok.to_json()
    assert tok.decode(np.concatenate([files.train, files.val])) == TEXT[:2000]
    LMTask.from_token_files(make_config("lm", "cpu-quick"), tmp_path / "tok", tokenizer=tok)  # no mismatch
    with pytest.raises(DataError, match="takes no vocab_size"):
        prepare([tmp_path / "t.txt"], tmp_path / "tok2", like=tok, vocab_size=300)


def test_attention_plot_labels_one_token_each():
    """plot's attention figure labels each row and column by its token's own text (a BPE
    token is several characters), so that the labels and the cells line up."""
    from scratchformer.plots import token_labels
    tok = BpeTokenizer.train([TEXT], 300)
    text = "First Citizen:\nBefore we proceed"
    labels = token_labels(tok, tok.encode(text))
    assert len(labels) == len(tok.encode(text)) < len(text)
    assert "".join(labels) == text.replace(" ", "\u2423").replace("\n", "\u21b5")
    # a token longer than a label holds (a long word, merged whole) is cut with an ellipsis
    word = " honorificabilitudinitatibus"
    long = BpeTokenizer.train([word * 100], 300)
    ids = long.encode(word * 2)
    assert len(ids) == 2
    assert token_labels(long, ids) == ["\u2423honorifica\u2026"] * 2


def test_the_end_of_text_is_a_bpes_separator_and_a_models_eos():
    """Where a sample ends and what token files put between documents: a BPE's
    <|endoftext|>, a model's own EOS; characters have none."""
    from scratchformer.data.hf_tokenizer import HFTokenizer
    from scratchformer.data.text import CharTokenizer
    trained = BpeTokenizer.train([TEXT], 300)
    assert bpe.end_of_text(trained) == trained.id_of(END_OF_TEXT) is not None
    assert tokens._separator(trained) == [trained.id_of(END_OF_TEXT)]
    assert bpe.end_of_text(CharTokenizer.from_text(TEXT)) is None
    own = HFTokenizer(trained._tok, bos_id=None, eos_id=7, add_bos=False, add_eos=False)
    assert bpe.end_of_text(own) == 7 and tokens._separator(own) == [7]
    adds = HFTokenizer(trained._tok, bos_id=None, eos_id=7, add_bos=False, add_eos=True)
    assert bpe.end_of_text(adds) == 7 and tokens._separator(adds) == []  # its encode ends each text with it


@pytest.mark.parametrize("kind,vocab", [("char", None), ("bpe", 300)])
def test_prepare_writes_splits_that_decode_to_the_sources(tmp_path, monkeypatch, kind, vocab):
    from scratchformer.data import tokens
    monkeypatch.setattr(tokens, "READ_CHARS", 50)  # many pieces per file
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text(TEXT)
    (tmp_path / "texts" / "b.txt").write_text(TEXT.upper())
    meta = prepare([tmp_path / "texts"], tmp_path / "data", tokenizer=kind, vocab_size=vocab)
    files = TokenFiles(tmp_path / "data")
    ids = np.concatenate([files.train, files.val])
    assert files.train.dtype == np.uint16 and meta["train"]["tokens"] + meta["val"]["tokens"] == len(ids)
    sep = "" if kind == "char" else END_OF_TEXT
    assert files.tokenizer.decode(ids) == TEXT + sep + TEXT.upper()
    assert meta["train"]["text_bytes"] + meta["val"]["text_bytes"] == 2 * len(TEXT)
    assert [s["bytes"] for s in meta["sources"]] == [len(TEXT)] * 2
    assert abs(meta["val"]["tokens"] - 0.1 * len(ids)) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "texts"]


def test_prepare_writes_nothing_when_a_source_is_bad(tmp_path):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "bad.txt").write_bytes(TEXT.encode() + b"\xff\xfe")
    with pytest.raises(DataError, match="bad.txt is not UTF-8"):
        prepare([tmp_path / "good.txt", tmp_path / "bad.txt"], tmp_path / "data", tokenizer="bpe", vocab_size=300)
    with pytest.raises(DataError, match="vocab_size=100 must be in"):
        prepare([tmp_path / "good.txt"], tmp_path / "data", tokenizer="bpe", vocab_size=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "good.txt"]


def test_prepare_makes_missing_parent_folders_and_removes_them_on_failure(tmp_path, monkeypatch):
    (tmp_path / "good.txt").write_text(TEXT)

    def broken(*a, **k):  # fails inside the folder being built, after its parents were made
        raise DataError("stop")
    with monkeypatch.context() as m:
        m.setattr(tokens, "_write", broken)
        with pytest.raises(DataError, match="stop"):
            prepare([tmp_path / "good.txt"], tmp_path / "a" / "b" / "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.txt"]
    meta = prepare([tmp_path / "good.txt"], tmp_path / "a" / "b" / "data")
    assert (tmp_path / "a" / "b" / "data" / "meta.json").is_file() and meta["train"]["tokens"] > 0
    (tmp_path / "file").write_text("")
    with pytest.raises(ScratchformerError, match=r"file/x/data: .*file is a file, not a folder"):
        prepare([tmp_path / "good.txt"], tmp_path / "file" / "x" / "data")


def test_dtype_follows_the_vocabulary():
    assert dtype_for(65536) == np.uint16 and dtype_for(65537) == np.uint32


def test_token_files_are_checked_on_opening(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    prepare([tmp_path / "a.txt"], tmp_path / "good")

    def broken(name, change):
        d = tmp_path / name
        shutil.copytree(tmp_path / "good", d)
        change(d)
        with pytest.raises(DataError) as e:
            TokenFiles(d)
        return str(e.value)

    def meta(d, **kw):
        m = json.loads((d / "meta.json").read_text())
        m.update(kw)
        (d / "meta.json").write_text(json.dumps(m))

    assert "lacks val.bin" in broken("noval", lambda d: (d / "val.bin").unlink())
    assert "train.bin has" in broken("cut", lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]))
    assert "not a token-file meta.json" in broken("meta", lambda d: (d / "meta.json").write_text("{"))
    assert "tokenizer.json" in broken("tok", lambda d: (d / "tokenizer.json").write_text("[1, 2"))
    assert "does not fit uint16" in broken("wide", lambda d: meta(d, tokenizer={"kind": "char", "vocab_size": 70000}))
    assert "meta.json says 9" in broken("count", lambda d: meta(d, tokenizer={"kind": "char", "vocab_size": 9}))


TINY = ["--set", "model.n_layer=1", "--set", "model.d_model=32", "--set", "model.n_head=2", "--set", "model.d_ff=64",
        "--set", "model.block_size=16", "--set", "train.batch_size=8", "--set", "optim.warmup_steps=5",
        "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10", "--set", "data.eval_windows=8",
        "--steps", "20", "--no-progress",
        "--set", "model.products=float32"]  # 1 and 4 devices agree to 1e-5 (README, Scale-out)


@pytest.fixture
def bpe_data(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    prepare([tmp_path / "a.txt"], tmp_path / "data", tokenizer="bpe", vocab_size=300)
    return tmp_path / "data"


@pytest.mark.parametrize("order", ["random", "epoch"])
def test_streamed_batches_are_the_on_device_ones_on_one_device_and_four(bpe_data, tmp_path, order):
    """Training on token files streamed from disk gives the metrics of the same run with
    its batches drawn on the device, byte for byte, and so does a run on 4 devices; in
    either data order."""
    runs = {}
    for name, stream, devices in (("device", "off", 1), ("stream", "on", 1), ("stream4", "on", 4)):
        env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        r = run_cli("train", "lm", "--data", bpe_data, "--out", tmp_path / name, *TINY, "--set", f"data.stream={stream}",
                    "--set", f"data.order={order}", env=env)
        assert r.returncode == 0, r.stderr
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert runs["stream"] == runs["device"]
    for a, b in zip(runs["stream4"], runs["device"]):  # 4 devices sum in another order
        assert a.keys() == b.keys() and all(v == pytest.approx(b[k], rel=1e-5) for k, v in a.items())
    assert (tmp_path / "stream" / "tokenizer.json").read_text() == (bpe_data / "tokenizer.json").read_text()


def test_bits_per_byte_and_bpe_runs_in_eval_and_sample(bpe_data, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "lm", "--data", bpe_data, "--out", run, *TINY).returncode == 0
    r = run_cli("eval", run, "--json")
    got = json.loads(r.stdout)
    files = TokenFiles(bpe_data)
    n_bytes = files.meta["val"]["text_bytes"] - files.tokenizer.token_bytes()[files.val[0]]  # the first is no target
    assert got["val_tokens"] == len(files.val) - 1
    assert got["bits_per_byte"] == pytest.approx(got["val_loss"] * got["val_tokens"] / math.log(2) / n_bytes,
                                                 rel=1e-9)
    text = bpe_data.parent / "other.txt"
    text.write_text("Speak, speak! You are all resolved rather to famish? " * 20)
    r = run_cli("eval", run, "--data", text, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tokens"] == len(files.tokenizer.encode(text.read_text())) - 1
    r = run_cli("sample", run, "--prompt", "First Citizen", "--tokens", "20")
    assert r.returncode == 0 and r.stdout.startswith("First Citizen")
