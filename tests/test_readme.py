"""README.md and docs/*.md stay true. The README's Python blocks run and do what it says; every
`scratchformer` command in a bash block of README.md or docs/*.md parses, with a real preset and
real config keys; every relative link and repository path exists, and so does every function the
reading order names; the README stays short. One test id per command: `README.md:42`."""

import contextlib
import functools
import io
import math
import re
import shlex

import pytest
from conftest import ROOT

README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
PACKAGE = ROOT / "src" / "scratchformer"
README_MAX_LINES = 300
README_MAX_BYTES = 20 * 1024
PICTURE_MAX_BYTES = 150 * 1024


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def run_block(code: str) -> tuple[dict, str]:
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace, out.getvalue()


def test_readme_has_the_two_blocks():
    assert len(python_blocks()) == 2


def test_hand_written_loop_learns_its_text():
    ns, out = run_block(python_blocks()[0])
    assert float(ns["loss"]) < 0.2, out  # from ln(V) ~ 2.8 at the start
    assert out.splitlines()[-1].startswith("to be, ")  # greedy continuation of the prompt


def test_fit_then_load(tmp_path, monkeypatch, tiny_text):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.txt").write_text(tiny_text * 2)
    ns, out = run_block(python_blocks()[1])
    vocab = len(ns["tok"])
    assert ns["summary"]["steps"] == 300 and ns["summary"]["val_loss"] < 0.5 * math.log(vocab), out
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "best.safetensors").is_file()
    assert ns["meta"]["data"]["path"] == str(tmp_path / "my.txt")
    assert abs(float(ns["probs"].sum()) - 1.0) < 1e-5 and ns["tok"].decode(ns["ids"]).startswith("ROMEO:")


# ---------------------------------------------------------------- commands in bash blocks
def _program_args(words: list[str]) -> list[str] | None:
    """The arguments after the program, if `words` runs scratchformer (`scratchformer ...`,
    `.venv/bin/scratchformer ...`, `python -m scratchformer ...`); else None."""
    if words and words[0].rsplit("/", 1)[-1] == "scratchformer":
        return words[1:]
    if len(words) >= 3 and re.fullmatch(r"(.*/)?python[\d.]*", words[0]) and words[1:3] == ["-m", "scratchformer"]:
        return words[3:]
    return None


def bash_commands(path) -> list[tuple[int, list[str]]]:
    """(line number, arguments) of every scratchformer command in the file's ```bash blocks,
    `\\` continuations joined and comments dropped; the line is the command's first."""
    found, block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = line.strip()
        if fence.startswith("```"):
            block = fence == "```bash"
            continue
        if not block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text, pending = pending + line, ""
        if _program_args(text.split()[:3]) is None:
            continue  # pip, hf, make...: not ours to check
        found.append((start, _program_args(shlex.split(text, comments=True))))
    return found


COMMANDS = [pytest.param(args, id=f"{path.relative_to(ROOT)}:{line}")
            for path in PAGES for line, args in bash_commands(path)]


@functools.cache
def _parser():
    from scratchformer.cli import build_parser
    return build_parser()


def test_the_commands_are_found():
    """The parser below would pass vacuously if the fences or prefixes changed."""
    assert len(bash_commands(README)) >= 10
    assert {p.id.split(":")[0] for p in COMMANDS} >= {"README.md", "docs/cli.md", "docs/data.md", "docs/gpt2.md"}


@pytest.mark.parametrize("args", COMMANDS)
def test_command_parses(args):
    from scratchformer.errors import UsageError
    from scratchformer.runconfig import make_config
    from scratchformer.tasks import TASKS
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            a = _parser().parse_args(args)
    except SystemExit as e:  # --help and --version print and exit 0
        assert e.code == 0 and {"--help", "-h", "--version"} & set(args), f"scratchformer {shlex.join(args)}: {e}"
        return
    except UsageError as e:
        pytest.fail(f"scratchformer {shlex.join(args)}: {e}")
    assert a.command is not None, f"scratchformer {shlex.join(args)} names no command"
    if a.command != "train":
        return
    task = TASKS[a.task]
    if a.preset is not None:
        assert a.preset in task.presets, f"--preset {a.preset} is not one of {a.task}'s: {', '.join(task.presets)}"
    preset = a.preset or (task.finetune_preset if a.init_from else task.default_preset)
    overrides = {}
    for item in a.sets:
        key, eq, value = item.partition("=")
        assert eq, f"--set {item} is not KEY=VALUE"
        overrides[key] = value
    make_config(a.task, preset, overrides)  # an unknown key or a bad value is a ConfigError


def test_config_key_table_lists_every_key():
    """docs/cli.md's table of config keys is the whole list that `train --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    known = set(re.findall(r"^ +((?:model|optim|train|lora|data)\.\w+) ", out.getvalue(), flags=re.MULTILINE))
    assert len(known) > 40, out.getvalue()
    table = (ROOT / "docs" / "cli.md").read_text().split("**Config keys.**", 1)[1].split("\n\n**", 1)[0]
    first_cells = re.findall(r"^\| (.*?) \|", table, flags=re.MULTILINE)
    listed = {key for cell in first_cells for key in re.findall(r"`([\w.]+)`", cell)}
    assert listed == known, f"missing: {sorted(known - listed)}; not keys: {sorted(listed - known)}"


# ---------------------------------------------------------------- links, paths, names, size
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"(?<![\w./-])((?:docs|benchmarks|tests)/[\w./-]*\w)")
MODULE = re.compile(r"`((?:[\w]+/)*[\w]+\.py)(?:::\w+)?`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_paths_exist(page):
    text = page.read_text()
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        assert "#" not in target, f"{target}: link the page, not a section (sections get renamed)"
        if not (page.parent / target).exists():
            missing.append(target)
    missing += [p for p in REPO_PATH.findall(text) if not (ROOT / p).exists()]
    files = [f.relative_to(ROOT).as_posix() for top in ("benchmarks", "src", "tests")
             for f in (ROOT / top).rglob("*.py")]
    missing += [m for m in MODULE.findall(text) if not any(f == m or f.endswith("/" + m) for f in files)]
    assert not missing, f"{page.name} names what does not exist: {sorted(set(missing))}"


def test_reading_order_names_real_functions():
    """Each step of the README's reading order names a file and what to look for in it."""
    section = README.read_text().split("## Reading the code", 1)[1].split("\n## ", 1)[0]
    steps = re.split(r"\n\d+\. ", section)[1:]
    assert len(steps) == 7, "layers, attention, models, loss, optimizers, training step, loop"
    for step in steps:
        step = step.split("\n\n")[0]  # the paragraph after the last step is not one
        files = [PACKAGE / f for f in re.findall(r"`([\w/]+\.py)`", step)]
        assert files and all(f.is_file() for f in files), f"no such file in src/scratchformer: {step}"
        source = "\n".join(f.read_text() for f in files)
        for name in re.findall(r"`([A-Za-z_]\w*)`", step):
            assert re.search(rf"^\s*(def|class)\s+{name}\b|^{name}\s*[:=]", source, flags=re.MULTILINE), \
                f"{name} is not defined in {', '.join(f.name for f in files)}"


def test_every_docs_page_is_linked_from_the_readme():
    text = README.read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in text, f"README.md does not link docs/{page.name}"


def test_readme_stays_short():
    data = README.read_bytes()
    lines = data.count(b"\n")
    assert lines <= README_MAX_LINES and len(data) <= README_MAX_BYTES, \
        f"README.md: {lines} lines, {len(data):,} bytes (at most {README_MAX_LINES}, {README_MAX_BYTES:,})"
    for picture in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", data.decode()):
        assert (ROOT / picture).stat().st_size <= PICTURE_MAX_BYTES, f"{picture} is over 150 KB"
