"""The REST API under /api/v1: one module per resource, all registered on one :class:`Api`."""

from .endpoint import Api

api = Api()

from . import audit, auth, files, meetings, users  # noqa: E402,F401  (modules register their endpoints)
from . import ai, transcripts  # noqa: E402,F401
from . import recordings  # noqa: E402,F401
from . import admin  # noqa: E402,F401
from . import cluster  # noqa: E402,F401
