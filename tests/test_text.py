"""Text data: the download (against a real HTTP server on 127.0.0.1), reading, the
tokenizer and the batching windows, with property-based tests."""

import hashlib
import http.server
import threading

import jax
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from scratchformer.data import text
from scratchformer.errors import DataError


@pytest.fixture
def server():
    """Serves /good (known bytes), /bad (other bytes) and /error (HTTP 500) on 127.0.0.1."""
    body = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/error":
                self.send_error(500, "boom")
                return
            data = body if self.path == "/good" else body[:-7] + b"garbage"
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hashlib.sha256(body).hexdigest()
    httpd.shutdown()


def test_download_success_and_cache(server, tmp_path):
    url, sha = server
    dest = tmp_path / "cache" / "corpus.txt"
    assert text.download(url + "/good", dest, sha) == dest
    assert text.sha256_file(dest) == sha
    assert text.download(url + "/error", dest, sha) == dest  # cached: no second fetch
    assert [p.name for p in dest.parent.iterdir()] == ["corpus.txt"]  # no temp files left


def test_download_checksum_mismatch_leaves_nothing(server, tmp_path):
    url, sha = server
    dest = tmp_path / "corpus.txt"
    with pytest.raises(DataError, match="sha256"):
        text.download(url + "/bad", dest, sha)
    assert list(tmp_path.iterdir()) == []


def test_download_server_error(server, tmp_path):
    url, sha = server
    with pytest.raises(DataError, match="HTTP 500"):
        text.download(url + "/error", tmp_path / "corpus.txt", sha)
    assert list(tmp_path.iterdir()) == []


def test_corrupted_cache_is_an_error(server, tmp_path):
    url, sha = server
    dest = tmp_path / "corpus.txt"
    dest.write_text("not the corpus")
    with pytest.raises(DataError, match="delete it"):
        text.download(url + "/good", dest, sha)


def test_shakespeare_from_seeded_cache(shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHFORMER_CACHE", str(tmp_path))
    (tmp_path / text.SHAKESPEARE_NAME).write_bytes(shakespeare_path.read_bytes())
    p = text.shakespeare_path(url="http://127.0.0.1:9/unreachable")
    corpus = text.read_text(p)
    assert len(corpus) == 1_115_394 and len(set(corpus)) == 65


def test_shakespeare_unreachable_says_to_pass_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRATCHFORMER_CACHE", str(tmp_path))
    unreachable = r"^download of http://127\.0\.0\.1:9/unreachable failed: .*pass --data FILE\)$"
    with pytest.raises(DataError, match=unreachable):
        text.shakespeare_path(url="http://127.0.0.1:9/unreachable")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"ab\x00cd", "binary"), (b"caf\xe9", "not UTF-8")])
def test_read_text_rejects_bad_files(tmp_path, content, match):
    p = tmp_path / "f.txt"
    p.write_bytes(content)
    with pytest.raises(DataError, match=match):
        text.read_text(p)
    with pytest.raises(DataError, match="no such file"):
        text.read_text(tmp_path / "missing.txt")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_tokenizer_round_trip(s):
    tok = text.CharTokenizer.from_text(s)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert ids.min() >= 0 and ids.max() < len(tok)
    assert list(tok.chars) == sorted(set(s))


@settings(max_examples=100, deadline=None)
@given(vocab=st.lists(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40, unique=True),
       picks=st.lists(st.integers(0, 10**6), max_size=300), piece=st.integers(1, 64))
def test_encode_equals_a_naive_lookup(vocab, picks, piece):
    """Any vocabulary order (a checkpoint's, say), any code points (astral ones too), and
    texts longer than the pieces encode looks up at a time."""
    tok = text.CharTokenizer("".join(vocab))
    s = "".join(vocab[i % len(vocab)] for i in picks)
    want = np.array([vocab.index(c) for c in s], np.int32)
    got = tok.encode(s, piece=piece)
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_unknown_characters_are_all_named():
    tok = text.CharTokenizer.from_text("abc")
    with pytest.raises(DataError, match="^character 'z' is not in the model's vocabulary"):
        tok.encode("abz")
    with pytest.raises(DataError, match=r"^3 characters \('z', 'é', '😀'\) are not in"):
        tok.encode("z" + "ab" * 10 + "😀é" + "zz", piece=4)  # found in different pieces


@settings(max_examples=50, deadline=None)
@given(n=st.integers(20, 300), block=st.integers(1, 16), seed=st.integers(0, 2**31 - 1))
def test_batch_windows_are_real_slices(n, block, seed):
    data = np.random.default_rng(seed).integers(0, 50, n).astype(np.int32)
    b = text.sample_batch(jax.random.PRNGKey(seed), data, batch=8, block=block)
    inputs, targets = np.asarray(b["inputs"]), np.asarray(b["targets"])
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])  # targets = inputs shifted by one
    s = data.tobytes()
    for row_in, row_t in zip(inputs, targets):
        window = np.concatenate([row_in, row_t[-1:]])
        assert window.tobytes() in s  # a contiguous slice of the data


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 400), block=st.integers(1, 16), batch=st.integers(1, 9), seed=st.integers(0, 2**31 - 1))
@example(n=40, block=16, batch=9, seed=0).via("one window an epoch, nine a batch")
@example(n=60, block=8, batch=9, seed=3).via("six windows an epoch, nine a batch")
def test_epoch_order_reads_every_window_once_an_epoch(n, block, batch, seed):
    """data.order=epoch: in each of three epochs the windows read are the text cut at one
    shift below the block, each exactly once, in a new order; the rows of consecutive
    steps are the epochs' windows in sequence, whatever the batch (more rows than an
    epoch's windows too: a short text)."""
    windows = text.epoch_windows(n, block)
    if windows < 1:
        return
    rng = jax.random.PRNGKey(seed)
    steps = -(-3 * windows // batch)
    starts = np.concatenate([np.asarray(text.epoch_starts(rng, s, n, block=block, batch=batch))
                             for s in range(steps)])
    orders = []
    for e in range(3):
        epoch = starts[e * windows:(e + 1) * windows]
        shift = int(epoch.min())
        assert shift < block and epoch.max() + block <= n - 1  # every window within the text
        assert sorted(epoch.tolist()) == list(range(shift, shift + windows * block, block))
        orders.append(epoch.tolist())
    # A new order each epoch: a repeat has chance ~1 / windows! (1 in 24 at 4 windows), so it
    # is asked only where that is negligible.
    assert windows < 8 or orders[0] != orders[1] != orders[2]


def test_epoch_order_at_a_late_step_is_the_epochs_order():
    """A step late in a run (as a resumed run computes it) reads the windows its place in
    the endless sequence names, without int32 overflow: row i of step s is window
    (s*B + i) mod n of epoch (s*B + i) // n, checked with Python's integers."""
    n_tokens, block, batch, rng = 10_000_019, 64, 48, jax.random.PRNGKey(1)
    n = text.epoch_windows(n_tokens, block)
    step = 2**31 - 5
    got = np.asarray(jax.jit(lambda s: text.epoch_starts(rng, s, n_tokens, block=block, batch=batch))(step))
    seen = {}
    for i in range(batch):
        epoch, pos = divmod(step * batch + i, n)
        if epoch not in seen:  # the epoch's windows, as epoch_starts draws them
            key = jax.random.fold_in(jax.random.fold_in(rng, text.ORDER_STREAM), np.uint32(epoch % 2**32))
            k_perm, k_shift = jax.random.split(key)
            seen[epoch] = np.asarray(jax.random.randint(k_shift, (), 0, block) + jax.random.permutation(k_perm, n) * block)
        assert got[i] == seen[epoch][pos], i


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 400), block=st.integers(1, 32))
def test_eval_windows_score_every_target_once(n, block):
    val = np.arange(n, dtype=np.int32)
    if n - 1 < block:
        with pytest.raises(DataError):
            text.eval_windows(val, block)
        return
    w = text.eval_windows(val, block)
    scored = w["targets"][w["weights"] > 0]
    assert sorted(scored.tolist()) == list(range(1, n))  # each target exactly once
    np.testing.assert_array_equal(w["targets"], w["inputs"] + 1)


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 400), block=st.integers(1, 32))
def test_eval_block_scores_a_short_split_in_one_window(n, block):
    """A split shorter than a window (block + 1 tokens) is one window of all of it; any
    other keeps the model's block; under 2 tokens there is nothing to score."""
    if n < 2:
        with pytest.raises(DataError, match="at least 2"):
            text.eval_block(n, block)
        return
    t = text.eval_block(n, block)
    assert t == (block if n > block else n - 1)
    w = text.eval_windows(np.arange(n, dtype=np.int32), t)
    assert sorted(w["targets"][w["weights"] > 0].tolist()) == list(range(1, n))
    if n <= block:
        assert w["inputs"].tolist() == [list(range(n - 1))]  # every target sees all the tokens before it


def test_evaluation_chunks():
    """~2k tokens per call on a CPU; on an accelerator 65,536 tokens (the gpu preset's 256
    windows of 256), fewer where a layer's attention probabilities would pass 1 GiB."""
    from scratchformer.tasks.lm import eval_chunk
    assert [eval_chunk(t, 4, "cpu") for t in (16, 64, 128, 256, 4096)] == [128, 32, 16, 8, 1]
    assert eval_chunk(256, 6, "gpu") == 256 and eval_chunk(64, 4, "gpu") == 1024
    big = eval_chunk(1024, 16, "gpu")
    assert big == 16 and big * 16 * 1024 * 1024 * 4 <= 1 << 30 < (big + 1) * 16 * 1024 * 1024 * 4
    assert eval_chunk(8192, 64, "tpu") == 1  # never fewer than one window
