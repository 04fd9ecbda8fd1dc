"""The program: `scratchformer ...` and `python -m scratchformer ...`.

glibc reads its malloc tunables once, at process start, so the process re-executes
itself with huge pages asked for (hugepages.py) before anything loads JAX; then JAX's
compilation cache is pointed at this user's private folder (compile_cache.py), which
JAX reads when it loads; only then is the command line imported and run.
"""

import sys

from .compile_cache import enable_default
from .hugepages import reexec_if_wanted


def main() -> int:
    reexec_if_wanted()
    enable_default()
    from .cli import main as run  # loads JAX: only after the re-exec, which would load it again
    return run()


if __name__ == "__main__":
    sys.exit(main())
