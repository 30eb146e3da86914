"""Run the ``flowtel`` command line as ``python -m exporters.cli``."""

from __future__ import annotations

from exporters.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    main(prog_name="flowtel")
