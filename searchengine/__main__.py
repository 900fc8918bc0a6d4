"""``python -m searchengine`` runs the CLI."""

from .cli import run

run()
