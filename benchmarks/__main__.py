"""``python -m benchmarks``: run the suite (see :mod:`benchmarks.run`)."""

from benchmarks.run import main

main()
