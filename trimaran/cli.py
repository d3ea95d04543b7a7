"""The ``trimaran`` command line: parses arguments and calls into the package; no logic of its own.

Each command group lives in its own section below; keep sections independent.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trimaran")
def main() -> None:
    """trimaran: a Raft-replicated KV cache, job queue and chat pub/sub on trio."""


# === simulate (trimaran.simulations) ============================================================


# === cluster and node (trimaran.node) ===========================================================


# === client commands (trimaran.client) ===========================================================


if __name__ == "__main__":
    main()
