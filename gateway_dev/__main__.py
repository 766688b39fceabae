"""``python -m gateway_dev COMMAND`` runs a development command (see ``gateway_dev.cli``)."""

import sys

from gateway_dev.cli import main

sys.exit(main(prog="python -m gateway_dev"))
