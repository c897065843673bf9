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

from protege.cli.root import app

# Each module registers its commands; imported in the order --help lists them.
# isort: off
from protege.cli import services, stream, models, data, evaluate, operate, review  # noqa: F401
# isort: on

__all__ = ["app"]
