"""`python -m benchmarks ARGS` is `chunkd bench ARGS` (benchmarks/cli.py)."""
import sys

from benchmarks.cli import main

raise SystemExit(main(sys.argv[1:]))
