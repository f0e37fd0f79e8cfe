"""LeNet-5 on numba-cpu vs PyTorch eager (same thread count), alternating calls, medians.

Run: ``python benchmarks/bench_cpu.py [--threads 2] [--quick]`` (the same as ``convforge bench``).
Prints a markdown table.
"""

from __future__ import annotations

import sys

from convforge.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
