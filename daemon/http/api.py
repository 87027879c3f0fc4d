"""The HTTP control API: /api/v1/... (one module per resource) and the seed-compatible
routes, each behind the token check and the strict query-parameter check."""
from __future__ import annotations

from starlette.routing import Route

from daemon.http.auth import Scope
from daemon.http.bulk import BulkRoutes
from daemon.http.cluster import ClusterRoutes
from daemon.http.common import Api, strict_routes
from daemon.http.instances import Instances
from daemon.http.ports import Served
from daemon.http.schedules import ScheduleRoutes
from daemon.http.seed_routes import SeedRoutes


def routes(node: Served, tokens: dict[str, Scope]) -> list[Route]:
    api = Api(node, tokens)
    return strict_routes([
        *ScheduleRoutes(api).routes(),
        *ClusterRoutes(api).routes(),
        *Instances(api).routes(),
        *BulkRoutes(api).routes(),
        *SeedRoutes(api).routes(),
    ])
