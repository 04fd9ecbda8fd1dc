"""The command line's default compilation cache: a folder of the user's own, mode 0700,
used only while no one else may write to it; the user's own choice and the opt-out are
respected; and a second command loads the programs the first compiled."""

import os
import stat
import subprocess
import sys

import pytest

from scratchformer import compile_cache


def env_for(tmp_path, **extra):
    return {"XDG_CACHE_HOME": str(tmp_path / "cache"), **extra}


def test_the_folder_is_made_private_and_named_to_jax(tmp_path):
    env = env_for(tmp_path)
    folder = compile_cache.enable_default(env)
    assert folder == tmp_path / "cache" / "scratchformer" / "jax"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(folder)
    assert int(env["JAX_COMPILATION_CACHE_MAX_SIZE"]) == compile_cache.MAX_BYTES


@pytest.mark.parametrize("where", ["folder", "parent"])
def test_a_folder_others_may_write_to_is_not_used(tmp_path, where):
    folder = compile_cache.cache_folder(env_for(tmp_path))
    folder.mkdir(parents=True)
    os.chmod(folder if where == "folder" else folder.parent, 0o777)
    env = env_for(tmp_path)
    assert compile_cache.enable_default(env) is None and "JAX_COMPILATION_CACHE_DIR" not in env


def test_a_file_in_its_place_or_an_unwritable_home_leaves_it_off(tmp_path):
    folder = compile_cache.cache_folder(env_for(tmp_path))
    folder.parent.mkdir(parents=True)
    folder.write_text("not a folder")
    assert compile_cache.enable_default(env_for(tmp_path)) is None
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert compile_cache.enable_default({"XDG_CACHE_HOME": str(locked)}) is None or os.getuid() == 0


def test_the_users_own_setting_and_the_opt_out_are_kept(tmp_path):
    mine = env_for(tmp_path, JAX_COMPILATION_CACHE_DIR="/somewhere/else")
    assert compile_cache.enable_default(mine) is None and mine["JAX_COMPILATION_CACHE_DIR"] == "/somewhere/else"
    off = env_for(tmp_path, SCRATCHFORMER_COMPILATION_CACHE="0")
    assert compile_cache.enable_default(off) is None and "JAX_COMPILATION_CACHE_DIR" not in off
    assert not (tmp_path / "cache").exists()


# The same command in-process, counting JAX's compilation-cache events.
COUNTING = """
import sys, jax.monitoring
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
from scratchformer.cli import main
code = main(sys.argv[1:])
print("hits", events.count("/jax/compilation_cache/cache_hits"))
sys.exit(code)
"""


def test_a_second_command_loads_what_the_first_compiled(tmp_path):
    """A short training run's programs land in the folder; the same run again (JAX
    pointed at that folder) loads them from it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(env_for(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    args = ["train", "reverse", "--steps", "4", "--no-progress", "--set", "train.eval_every=4",
            "--set", "train.steps_per_call=2", "--set", "data.eval_size=64", "--set", "optim.warmup_steps=1"]
    folder = tmp_path / "cache" / "scratchformer" / "jax"
    r = subprocess.run([sys.executable, "-m", "scratchformer", *args, "--out", str(tmp_path / "a")], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert any(folder.iterdir()), "nothing was cached"
    r = subprocess.run([sys.executable, "-c", COUNTING, *args, "--out", str(tmp_path / "b")],
                       env={**env, "JAX_COMPILATION_CACHE_DIR": str(folder)}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split("hits ")[-1]) > 0, r.stdout
