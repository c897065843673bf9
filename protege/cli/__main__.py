"""python -m protege.cli ..."""

from protege.cli import main

main()
