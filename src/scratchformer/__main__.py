"""The program: `scratchformer ...` and `python -m scratchformer ...`.

glibc reads its malloc tunables once, at process start, so the process re-executes
itself with huge pages asked for (hugepages.py) before anything loads JAX; only then
is the command line imported and run.
"""

import sys

from .hugepages import reexec_if_wanted


def main() -> int:
    reexec_if_wanted()
    from .cli import main as run  # loads JAX: only after the re-exec, which would load it again
    return run()


if __name__ == "__main__":
    sys.exit(main())
