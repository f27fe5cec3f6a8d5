"""``python -m solardesk`` runs the command line."""

from solardesk.cli import main

main()
