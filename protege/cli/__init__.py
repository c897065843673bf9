"""The ``protege`` command line (``protege.cli:app``).

protege demo                     # the whole pipeline on generated tickets, then a summary
protege up                       # embedded broker + the six services, supervised
protege run scorer               # one service (what docker-compose and k8s run)
protege broker start|stop|status # the embedded Apache Kafka broker
protege bench stream --train T.jsonl --test S.jsonl --report-json R.json
protege trace REQUEST_ID         # one request's events across the services, in order
protege ask "text" --tenant A --task T  # one request, its answer
protege doctor                   # what a first run needs, checked; how to fix what is missing
protege replay --tenant T --task K --last 24h --version v0004   # a candidate on recorded traffic
protege review pull --tenant T --task K   # the review sample waiting for labels (then: review submit FILE)
"""

from __future__ import annotations

import sys

from aiokafka.errors import KafkaConnectionError, KafkaError
from pydantic import ValidationError

from protege.cli.root import app
from protege.errors import ProtegeError
from protege.settings import settings_error

# Each module registers its commands; imported in the order --help lists them.
# isort: off
from protege.cli import services, stream, models, data, evaluate, operate, review  # noqa: F401
# isort: on

__all__ = ["app", "main"]

NO_BROKER_HINT = (
    "is it running? `protege broker start` starts the embedded one, `protege up` the whole pipeline; "
    "PROTEGE_BOOTSTRAP_SERVERS says where it is"
)


def main() -> None:
    """The ``protege`` command. What a command cannot do for a reason outside the program — no
    broker at that address, a refused login, a setting that names a missing file — is one line
    on stderr and exit status 2, not a traceback (a traceback is for protege's own bugs)."""
    try:
        app()
    except KafkaConnectionError as e:
        servers = _setting("bootstrap_servers")
        sys.stderr.write(f"protege: cannot reach Kafka at {servers}: {e} ({NO_BROKER_HINT})\n")
        sys.exit(2)
    except KafkaError as e:  # refused credentials, a topic that is not there, ...
        sys.stderr.write(f"protege: Kafka at {_setting('bootstrap_servers')} said: {type(e).__name__}: {e}\n")
        sys.exit(2)
    except ProtegeError as e:
        sys.stderr.write(f"protege: {e}\n")
        sys.exit(2)
    except ValidationError as e:  # PROTEGE_* settings that do not parse; another model's is a bug
        if (said := settings_error(e)) is None:
            raise
        sys.stderr.write(f"protege: {said}\n")
        sys.exit(2)


def _setting(name: str) -> str:
    from protege.settings import Settings

    try:
        return str(getattr(Settings(), name))
    except Exception:  # settings that do not parse say so themselves when a command reads them
        return "(PROTEGE_BOOTSTRAP_SERVERS)"
