"""``python -m trimaran`` runs the command line."""

from trimaran.cli import main

main()
