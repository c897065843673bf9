"""python -m protege.cli ..."""

from protege.cli import app

app()
