"""The ``medadapt`` command line: one command per job, thin over the Python API.

``base`` holds the group, its errors and exit codes and the shared options; ``jobs`` the
commands that run a job (train, adapt, shift, validate, batch); ``tools`` the commands around
them (plugins, profile check, model import and export, augment-preview). Plugins add their
own commands through the ``medadapt_commands`` hook (the demo is the phantom plugin's).
"""

from medadapt.engine.cli import jobs as jobs
from medadapt.engine.cli import tools as tools
from medadapt.engine.cli.base import cli as cli
from medadapt.engine.cli.base import configure_logging as configure_logging
from medadapt.engine.cli.base import main as main
from medadapt.engine.cli.base import refusal_text as refusal_text
