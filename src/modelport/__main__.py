"""``python -m modelport`` runs the CLI."""

from modelport.cli.main import app

app()
