"""``python -m medadapt.engine`` runs the ``medadapt`` command line."""

from medadapt.engine.cli import main

main()
