"""Llama, Qwen2 and Mistral import and export, checked against Hugging Face `transformers`
(torch, CPU) on small random models made here, each with a tokenizer of the kind such
models ship: logits, greedy generation with and without the KV cache, the loss of
`eval --data` on a text encoded as transformers' tokenizer(text) does, an exported run
loaded back by transformers; both layouts of config.json, bfloat16 and sharded weights;
the settings that are refused; and an import's peak memory."""

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from scratchformer import runs
from scratchformer.cli import main
from scratchformer.data import hf_tokenizer, text as text_data
from scratchformer.data.bpe import BpeTokenizer, tokenizer_from_json
from scratchformer.data.hf_tokenizer import HFTokenizer
from scratchformer.decode import generate
from scratchformer.models import lm_forward

from conftest import latest_first_draw

TEXT = ("the quick brown fox jumps over the lazy dog. " * 40 + "ROMEO: O, she doth teach the torches!\n" * 20)
EVAL_TEXT = "ROMEO: O, she doth teach the torches to burn bright! \u2603 the lazy dog.\n" * 8  # a snowman: byte fallback
PROMPT = "ROMEO: O, she"
CONTEXT = 96  # max_position_embeddings: a prompt and 50 tokens fit, so no sliding window is needed


# ---------------------------------------------------------------- tokenizers of the three kinds
def sentencepiece_bpe(size: int = 400) -> Tokenizer:
    """Llama 2's and TinyLlama's kind: BPE over "▁"-for-space text with byte fallback
    (<0x00>..<0xFF> after <unk>, <s>, </s>), and a post-processor that prepends <s>."""
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = metaspace
    t.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=size, special_tokens=["<unk>", "<s>", "</s>"],
                                                      show_progress=False))
    trained = json.loads(t.to_str())["model"]
    learned = [w for w, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if w not in ("<unk>", "<s>", "</s>")]
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + learned)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = metaspace
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    return tok


def byte_level_bpe(bos: str | None = None) -> Tokenizer:
    """GPT-2's kind (SmolLM2's, Qwen2's), <|endoftext|> its id 0; with `bos`, a token Llama 3's
    way: added, and prepended by the post-processor."""
    tok = Tokenizer.from_str(BpeTokenizer.train([TEXT], 300).to_json())
    if bos:
        tok.add_special_tokens([bos])
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))])])
    return tok


TOKENIZERS = {  # name: (tokenizer.json, tokenizer_config.json)
    "sentencepiece": (sentencepiece_bpe, {"tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True,
                                          "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
                                          "unk_token": "<unk>"}),
    "llama3": (lambda: byte_level_bpe("<|begin_of_text|>"),
               {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                "eos_token": "<|endoftext|>"}),
    "byte-level": (byte_level_bpe, {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>",
                                    "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}),
}

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 50000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # head 8: every band of the formula
CASES = {  # transformers' class, its config (beyond the shared tiny one), tokenizer, how it is saved
    "llama-gqa-4to1-untied": ("Llama", dict(num_attention_heads=8, num_key_value_heads=2), "sentencepiece", {}),
    "llama3-scaling-gqa-2to1-tied-v4-layout": (
        "Llama", dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      rope_parameters=LLAMA3_ROPE), "llama3", {"layout": "v4"}),
    "llama-head-dim-bf16-shards": ("Llama", dict(num_attention_heads=4, head_dim=16, rope_parameters={
        "rope_type": "default", "rope_theta": 100000.0}), "sentencepiece", {"bf16": True, "shards": "40KB"}),
    "qwen2-qkv-biases-tied-v4-layout": ("Qwen2", dict(num_attention_heads=4, num_key_value_heads=2,
                                                      tie_word_embeddings=True), "byte-level",
                                        {"layout": "v4", "padded_vocab": 12}),
    "mistral-no-window": ("Mistral", dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=None),
                          "sentencepiece", {}),
}


def v4_layout(config: dict) -> dict:
    """transformers 4's config.json of what 5 saves: rope_theta and rope_scaling at the top."""
    c = dict(config)
    rope = dict(c.pop("rope_parameters"))
    c["rope_theta"] = rope.pop("rope_theta")
    c["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    c["torch_dtype"] = c.pop("dtype", "float32")
    c.pop("layer_types", None)
    return c


def hf_folder(path, case: str, seed: int = 0):
    """A random model of `case` saved as a Hugging Face folder with its tokenizer, every
    weight perturbed (norms start at one and biases at zero, which would leave their import
    untested). Returns (folder, model) with the model's weights as the folder holds them."""
    family, config, tokenizer, save = CASES[case]
    make, tok_config = TOKENIZERS[tokenizer]
    tok = make()
    torch.manual_seed(seed)
    bos, eos = (tok.token_to_id(tok_config[k]) for k in ("bos_token", "eos_token"))
    cfg = getattr(transformers, f"{family}Config")(
        vocab_size=tok.get_vocab_size() + save.get("padded_vocab", 0), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, initializer_range=0.1,
        bos_token_id=bos, eos_token_id=eos, **{"tie_word_embeddings": False, **config})
    model = getattr(transformers, f"{family}ForCausalLM")(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if save.get("bf16"):
        model.to(torch.bfloat16)
    model.save_pretrained(path, **({"max_shard_size": save["shards"]} if "shards" in save else {}))
    if save.get("bf16"):  # the folder's values in float32, and the rotary frequencies computed again in float32
        model = getattr(transformers, f"{family}ForCausalLM").from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # 50 tokens whatever they are
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config))
    if save.get("layout") == "v4":
        (path / "config.json").write_text(json.dumps(v4_layout(json.loads((path / "config.json").read_text()))))
    return path, model


def cli(capsys, *args):
    """(exit code, stdout, stderr) of the command line, run in this process."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def ours(run):
    task, params, _ = runs.load(run)
    return task, params


def forward(task, params, ids):
    got, _ = lm_forward(params, jnp.asarray(ids), cfg=dataclasses.replace(task.cfg.model, products="float32"))
    return np.asarray(got)


@pytest.fixture(scope="module", params=list(CASES))
def imported(request, tmp_path_factory):
    """(run folder, transformers model, transformers tokenizer, case) of an imported random model."""
    d = tmp_path_factory.mktemp(request.param)
    folder, model = hf_folder(d / "hf", request.param)
    assert main(["import", "llama", str(folder), "--out", str(d / "run")]) == 0
    return d / "run", model, transformers.AutoTokenizer.from_pretrained(folder), request.param


# ---------------------------------------------------------------- the model
def test_import_gives_the_logits_of_transformers(imported):
    run, model, _, _ = imported
    task, params = ours(run)
    ids = np.random.default_rng(1).integers(0, task.cfg.model.vocab_size, (2, CONTEXT))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    assert np.abs(forward(task, params, ids) - want).max() < 1e-4
    assert np.abs(want).max() > 1.0  # logits that differ between tokens: the check has teeth


def test_import_records_the_models_settings_as_config_values(imported):
    run, model, _, case = imported
    m, c = ours(run)[0].cfg.model, model.config
    assert (m.n_layer, m.n_head, m.d_model, m.d_ff, m.block_size, m.vocab_size) == (
        c.num_hidden_layers, c.num_attention_heads, c.hidden_size, c.intermediate_size, c.max_position_embeddings,
        c.vocab_size)
    assert (m.n_kv_head or m.n_head) == c.num_key_value_heads
    assert m.head_width == getattr(c, "head_dim", c.hidden_size // c.num_attention_heads)  # Qwen2Config has none
    assert m.rope_theta == c.rope_parameters["rope_theta"] and m.ln_eps == c.rms_norm_eps
    assert m.tie_embeddings == c.tie_word_embeddings and m.qkv_bias == case.startswith("qwen2")
    assert (m.norm, m.positions, m.activation, m.bias, m.products) == ("rmsnorm", "rope", "swiglu", False, "float32")
    if c.rope_parameters["rope_type"] == "llama3":
        r = c.rope_parameters
        assert (m.rope_scaling, m.rope_factor, m.rope_low_freq_factor, m.rope_high_freq_factor,
                m.rope_original_positions) == ("llama3", r["factor"], r["low_freq_factor"], r["high_freq_factor"],
                                               r["original_max_position_embeddings"])


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv-cache", "no-cache"])
def test_greedy_generation_matches_transformers(imported, use_cache):
    run, model, hf_tok, _ = imported
    task, params = ours(run)
    prompt = task.tokenizer.encode(PROMPT)
    assert prompt.tolist() == hf_tok(PROMPT)["input_ids"]
    n = 50
    with torch.no_grad():
        want = model.generate(torch.tensor(prompt)[None], max_new_tokens=n, do_sample=False, pad_token_id=0)[0].numpy()
    got = generate(params, task.cfg.model, prompt, n, temperature=0.0, use_cache=use_cache)
    assert len(want) == len(prompt) + n
    assert list(got) == list(want)
    # ended by an EOS: the id whose first draw comes last
    eos, at = latest_first_draw(want, len(prompt))
    with torch.no_grad():
        want = model.generate(torch.tensor(prompt)[None], max_new_tokens=n, do_sample=False, pad_token_id=0,
                              eos_token_id=eos)[0].numpy()
    got = generate(params, task.cfg.model, prompt, n, temperature=0.0, use_cache=use_cache, stop=eos)
    assert len(want) == at + 1 and list(got) == list(want)


def test_sample_prints_transformers_tokens_without_the_bos(imported, capsys):
    run, model, hf_tok, _ = imported
    task, _ = ours(run)
    prompt = hf_tok(PROMPT)["input_ids"]
    with torch.no_grad():
        want = model.generate(torch.tensor(prompt)[None], max_new_tokens=50, do_sample=False, pad_token_id=0)[0]
    for extra in ([], ["--no-cache"]):
        code, out, err = cli(capsys, "sample", run, "--prompt", PROMPT, "--tokens", "50", "--temperature", "0",
                             "--ignore-eos", *extra)
        assert code == 0, err
        assert out == task.tokenizer.decode(want.numpy()) + "\n" and out.startswith(PROMPT)


def test_a_sample_ends_at_the_models_eos(small_run, tmp_path, capsys):
    """sample stops where the model draws its EOS, as transformers' generate does, and
    leaves the EOS out of the text, saying so on stderr; --ignore-eos goes on to --tokens.
    (The model's EOS is made a token this random model draws, late in a greedy sample.)"""
    task, params = ours(small_run[0])
    prompt = task.tokenizer.encode(PROMPT)
    whole = generate(params, task.cfg.model, prompt, 50, temperature=0.0)
    eos, at = latest_first_draw(whole, len(prompt))
    folder = shutil.copytree(small_run[2], tmp_path / "hf")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": task.tokenizer.token(eos)}))
    assert main(["import", "llama", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert ours(tmp_path / "run")[0].tokenizer.eos_id == eos
    capsys.readouterr()
    args = ("sample", tmp_path / "run", "--prompt", PROMPT, "--tokens", "50", "--temperature", "0")
    code, out, err = cli(capsys, *args)
    assert code == 0 and out == task.tokenizer.decode(whole[:at]) + "\n", err
    assert f"after {at + 1 - len(prompt)} of 50 tokens" in err and "--ignore-eos" in err
    code, out, err = cli(capsys, *args, "--ignore-eos")
    assert code == 0 and out == task.tokenizer.decode(whole) + "\n" and not err


def test_eval_data_gives_transformers_loss_on_the_text(imported, tmp_path, capsys):
    """eval --data FILE: the text encoded as transformers' tokenizer(text) does (with the
    BOS where the model's tokenizer adds one), every target scored once."""
    run, model, hf_tok, _ = imported
    (tmp_path / "eval.txt").write_text(EVAL_TEXT)
    ids = hf_tok(EVAL_TEXT)["input_ids"]
    assert ours(run)[0].tokenizer.encode(EVAL_TEXT).tolist() == ids
    starts, weights = text_data.eval_starts(len(ids), CONTEXT)
    total = 0.0
    for s, w in zip(starts, weights):
        window = torch.tensor(ids[s:s + CONTEXT + 1])
        with torch.no_grad():
            logits = model(window[None, :-1]).logits[0]
        losses = torch.nn.functional.cross_entropy(logits, window[1:], reduction="none").numpy()
        total += float((losses * w).sum())
    code, out, err = cli(capsys, "eval", run, "--data", tmp_path / "eval.txt", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["tokens"] == len(ids) - 1
    assert abs(result["loss"] - total / (len(ids) - 1)) < 1e-5


def test_export_loads_in_transformers_with_the_same_logits(imported, tmp_path, capsys):
    run, model, hf_tok, case = imported
    task, params = ours(run)
    code, out, err = cli(capsys, "export", run, "--out", tmp_path / "hf")
    assert code == 0, err
    cls = "Qwen2ForCausalLM" if case.startswith("qwen2") else "LlamaForCausalLM"
    assert f"loads with transformers' {cls}.from_pretrained" in out
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(back).__name__ == cls
    ids = np.random.default_rng(2).integers(0, task.cfg.model.vocab_size, (1, CONTEXT))
    with torch.no_grad():
        again, first = back(torch.tensor(ids)).logits.numpy(), model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(again, first, atol=1e-5, rtol=0)  # the same float32 weights
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for s in (PROMPT, EVAL_TEXT):
        assert tok(s)["input_ids"] == hf_tok(s)["input_ids"]
    # and back again: the same run
    code, _, err = cli(capsys, "import", "llama", tmp_path / "hf", "--out", tmp_path / "again")
    assert code == 0, err
    task2, params2 = ours(tmp_path / "again")
    assert task2.cfg.model == task.cfg.model and task2.tokenizer.to_json() == task.tokenizer.to_json()
    for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- config.json's two layouts
def test_both_config_layouts_import_the_same(tmp_path, capsys):
    """transformers 5 saves rope_parameters; 4 (SmolLM2, Llama 3.2, Qwen2.5 on the hub)
    rope_theta and rope_scaling at the top level, the kind under rope_type or type."""
    folder, _ = hf_folder(tmp_path / "v5", "llama3-scaling-gqa-2to1-tied-v4-layout")
    config = json.loads((folder / "config.json").read_text())
    assert "rope_theta" in config and "rope_parameters" not in config  # the case saves transformers 4's
    v5 = {k: v for k, v in config.items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**config["rope_scaling"], "rope_theta": config["rope_theta"]}
    (folder / "config.json").write_text(json.dumps(v5))
    old = shutil.copytree(folder, tmp_path / "v4-type")
    scaling = {("type" if k == "rope_type" else k): v for k, v in config["rope_scaling"].items()}
    (old / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
    for name, f in (("a", folder), ("b", old)):
        code, _, err = cli(capsys, "import", "llama", f, "--out", tmp_path / name)
        assert code == 0, err
    (ta, pa), (tb, pb) = ours(tmp_path / "a"), ours(tmp_path / "b")
    assert ta.cfg == tb.cfg and ta.cfg.model.rope_scaling == "llama3" and ta.cfg.model.rope_theta == 50000.0
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- the tokenizer
@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_the_tokenizer_encodes_as_transformers_and_counts_bytes(kind, tmp_path):
    make, config = TOKENIZERS[kind]
    make().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer.from_folder(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert tok.add_bos == (kind != "byte-level") and tok.bos_id == hf.bos_token_id and tok.eos_id == hf.eos_token_id
    for s in (PROMPT, EVAL_TEXT, "  two  spaces\nand \u00e9"):
        ids = tok.encode(s)
        assert ids.tolist() == hf(s)["input_ids"]
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)  # the text, without the BOS
        prefix_space = 1 if kind == "sentencepiece" and not s.startswith(" ") else 0  # SentencePiece's "▁" before a text
        assert tok.token_bytes()[ids].sum() == len(s.encode()) + prefix_space
    again = tokenizer_from_json(tok.to_json())
    assert again.to_json() == tok.to_json() and again.encode(EVAL_TEXT).tolist() == tok.encode(EVAL_TEXT).tolist()


@pytest.mark.parametrize("kind", list(TOKENIZERS))
def test_a_long_text_is_encoded_in_pieces_as_a_whole(kind, tmp_path, monkeypatch, shakespeare_path):
    """Pieces cut at line starts, each encoded after the line before it: the ids of the
    whole text, SentencePiece's mark of a text's beginning included."""
    make, config = TOKENIZERS[kind]
    make().save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTokenizer.from_folder(tmp_path)
    text = shakespeare_path.read_text()[:100_000] + "\n\n  indented\n\tx\nend"
    whole = tok.encode(text).tolist()
    monkeypatch.setattr(hf_tokenizer, "ENCODE_PIECE", 997)
    assert tok.encode(text).tolist() == whole


@pytest.mark.parametrize("template", [True, False], ids=["bos-template", "no-post-processor"])
def test_the_post_processor_decides_the_bos_as_in_transformers_5(template, tmp_path):
    """transformers 5 encodes as tokenizer.json's post-processor says and drops
    tokenizer_config.json's add_bos_token / add_eos_token (4's LlamaTokenizerFast took them)."""
    tok = sentencepiece_bpe()
    if not template:
        tok.post_processor = None
    tok.save(str(tmp_path / "tokenizer.json"))
    for add_bos, add_eos in ((False, False), (True, True)):
        config = {**TOKENIZERS["sentencepiece"][1], "add_bos_token": add_bos, "add_eos_token": add_eos}
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
        ours = HFTokenizer.from_folder(tmp_path)
        assert (ours.add_bos, ours.add_eos) == (template, False)
        assert ours.encode(PROMPT).tolist() == transformers.AutoTokenizer.from_pretrained(tmp_path)(PROMPT)["input_ids"]


# ---------------------------------------------------------------- an imported run is a run
@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    folder, _ = hf_folder(d / "hf", "llama-gqa-4to1-untied")
    assert main(["import", "llama", str(folder), "--out", str(d / "run")]) == 0
    (d / "text.txt").write_text(EVAL_TEXT * 4)
    return d / "run", d / "text.txt", folder


def test_an_imported_run_samples_evaluates_plots_and_fine_tunes(small_run, tmp_path, capsys):
    run, text, _ = small_run
    code, out, err = cli(capsys, "sample", run, "--prompt", PROMPT, "--tokens", "20", "--seed", "3")
    assert code == 0 and out.startswith(PROMPT), err
    code, out, err = cli(capsys, "eval", run, "--data", text, "--json")
    assert code == 0 and json.loads(out)["bits_per_byte"] > 0, err
    code, out, err = cli(capsys, "plot", run)
    assert code == 0 and (run / "attention.png").is_file(), err
    code, _, err = cli(capsys, "train", "lm", "--init-from", run, "--data", text, "--out", tmp_path / "ft",
                       "--steps", "3", "--set", "model.block_size=32", "--set", "train.batch_size=2",
                       "--set", "optim.lr=1e-12", "--set", "optim.min_lr=0", "--no-progress")
    assert code == 0, err
    (_, start), (task, tuned) = ours(run), ours(tmp_path / "ft")
    assert task.cfg.model.block_size == 32 and task.cfg.model.n_kv_head == 2
    assert (tmp_path / "ft" / "tokenizer.json").read_text() == (run / "tokenizer.json").read_text()
    np.testing.assert_allclose(tuned["blocks"][1]["mlp"]["gate"]["w"], start["blocks"][1]["mlp"]["gate"]["w"],
                               atol=1e-9)
    code, out, err = cli(capsys, "sample", tmp_path / "ft", "--prompt", PROMPT, "--tokens", "5")
    assert code == 0 and out.startswith(PROMPT), err


def test_token_files_of_a_models_tokenizer_hold_each_text_as_it_encodes(small_run, tmp_path, capsys):
    """prepare --tokenizer-from RUN: each file encoded as tokenizer(text) does (here with its
    BOS), an EOS between files."""
    run, _, folder = small_run
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    (tmp_path / "a.txt").write_text(EVAL_TEXT)
    (tmp_path / "b.txt").write_text(PROMPT)
    code, _, err = cli(capsys, "prepare", tmp_path / "a.txt", tmp_path / "b.txt", "--out", tmp_path / "tokens",
                       "--tokenizer-from", run)
    assert code == 0, err
    ids = np.concatenate([np.fromfile(tmp_path / "tokens" / f"{s}.bin", np.uint16) for s in ("train", "val")])
    assert ids.tolist() == hf_tok(EVAL_TEXT)["input_ids"] + [hf_tok.eos_token_id] + hf_tok(PROMPT)["input_ids"]


# ---------------------------------------------------------------- what is refused
@pytest.fixture(scope="module")
def broken_folders(tmp_path_factory):
    """{name: folder}: folders with one thing wrong each."""
    tmp_path = tmp_path_factory.mktemp("broken")
    untied, _ = hf_folder(tmp_path / "untied", "llama-gqa-4to1-untied")
    tied, _ = hf_folder(tmp_path / "tied", "llama3-scaling-gqa-2to1-tied-v4-layout")
    cases = {}

    def copy(name, good=untied, **change):
        d = tmp_path / name
        shutil.copytree(good, d)
        c = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**c, **change}))
        cases[name] = d
        return d

    rope = json.loads((untied / "config.json").read_text())["rope_parameters"]
    copy("yarn", rope_parameters={**rope, "rope_type": "yarn", "factor": 4.0})
    copy("v4-dynamic", tied, rope_scaling={"type": "dynamic", "factor": 2.0})
    copy("partial-rotary", rope_parameters={**rope, "partial_rotary_factor": 0.5})
    copy("attention-bias", attention_bias=True, mlp_bias=False)
    copy("mlp-bias", mlp_bias=True)
    copy("gelu", hidden_act="gelu_pytorch_tanh")
    copy("mistral-window", model_type="mistral", sliding_window=4096)
    copy("qwen2-window", model_type="qwen2", use_sliding_window=True, sliding_window=64)
    copy("quantized", quantization_config={"quant_method": "bitsandbytes"})
    copy("gpt-neox", model_type="gpt_neox")
    copy("kv-heads", num_key_value_heads=3)
    copy("wider", hidden_size=64)
    copy("untied-without-head", tied, tie_word_embeddings=False)
    copy("tied-with-its-own-head", tie_word_embeddings=True)
    (copy("no-tokenizer") / "tokenizer.json").unlink()
    return cases


@pytest.mark.parametrize("case,expected", [
    ("yarn", "rope_type='yarn' (accepted: none/default, llama3)"),
    ("v4-dynamic", "rope_type='dynamic' (accepted: none/default, llama3)"),
    ("partial-rotary", "partial_rotary_factor=0.5 (only 1.0"),
    ("attention-bias", "attention_bias=True (only false"),
    ("mlp-bias", "mlp_bias=True (only false)"),
    ("gelu", "hidden_act='gelu_pytorch_tanh' (only 'silu'"),
    ("mistral-window", "sliding_window=4096 (only null"),
    ("qwen2-window", "use_sliding_window=True (only false)"),
    ("quantized", "does not know: quantization_config"),
    ("gpt-neox", "model_type='gpt_neox' is not one this imports"),
    ("kv-heads", "num_attention_heads=8 is not a multiple of num_key_value_heads=3"),
    ("wider", "embed_tokens.weight has shape"),
    ("untied-without-head", "has no lm_head.weight, and config.json says tie_word_embeddings=false"),
    ("tied-with-its-own-head", "lm_head.weight differs from embed_tokens.weight"),
    ("no-tokenizer", "has no tokenizer.json"),
])
def test_what_the_model_does_not_compute_is_refused_in_one_line(tmp_path, broken_folders, case, expected, capsys):
    code, _, err = cli(capsys, "import", "llama", broken_folders[case], "--out", tmp_path / "run")
    assert code == 2, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


# ---------------------------------------------------------------- memory
MEASURE = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from scratchformer import llama
    jnp.zeros(4).block_until_ready()  # JAX's runtime started: part of the baseline
    def status(key):  # kB. VmHWM, not ru_maxrss, which keeps the size of the forked parent
        return 1024 * int(next(l for l in open("/proc/self/status") if l.startswith(key + ":")).split()[1])
    before = status("VmRSS")
    llama.import_llama(sys.argv[1], sys.argv[2])
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
""")


def test_an_import_holds_the_float32_model_about_once(tmp_path):
    """A model of ~90 MB in float32, saved in bfloat16 shards: the import's peak resident
    memory grows by at most 1.3x that over what the interpreter and JAX held before it."""
    torch.manual_seed(0)
    tok = byte_level_bpe()
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=5,
                                   num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16)
    float32_bytes = 4 * sum(p.numel() for p in model.parameters())
    model.save_pretrained(tmp_path / "hf", max_shard_size="30MB")
    del model
    tok.save(str(tmp_path / "hf" / "tokenizer.json"))
    assert len(list((tmp_path / "hf").glob("*.safetensors"))) > 1 and 80e6 < float32_bytes < 100e6
    r = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / "hf"), str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    growth = m["peak"] - m["before"]
    assert growth <= 1.3 * float32_bytes, (growth / 1e6, float32_bytes / 1e6)
    assert (tmp_path / "run" / "checkpoints" / "best.safetensors").stat().st_size > float32_bytes


@pytest.mark.parametrize("key", ["value_embed", "unet_skips", "attn_gate", "bigram_embed"])
def test_export_refuses_the_lm_options_a_llama_does_not_have(key):
    """A Llama-shaped run with value embeddings, U-net skips or head-wise gates computes
    what no LlamaForCausalLM does: refused by name."""
    from scratchformer.config import ModelConfig
    from scratchformer.errors import UsageError
    from scratchformer.llama import LLAMA_MODEL, hf_config
    m = ModelConfig(vocab_size=10, **{k: v for k, v in LLAMA_MODEL.items() if k != key}, **{key: True})
    with pytest.raises(UsageError, match=f"^the run's model.{key}=True has no Llama counterpart"):
        hf_config(m, None)
