"""/api/v1/cluster, /api/v1/whoami and /api/v1/jobs: what this cluster is and runs."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from daemon.http import models as m
from daemon.http.auth import Scope
from daemon.http.common import Api, job_info, ok

NODE_SEEN_WITHIN = 60.0   # seconds; the cluster view lists daemons that beat this recently


class ClusterRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api

    def routes(self) -> list[Route]:
        g, V = self.api.guarded, Scope.VIEW
        return [
            Route("/api/v1/jobs", g(V, self.jobs), methods=["GET"]),
            Route("/api/v1/cluster", g(V, self.cluster), methods=["GET"]),
            Route("/api/v1/whoami", g(V, self.whoami), methods=["GET"]),
        ]

    async def jobs(self, request: Request) -> Response:
        jobs = self.api.node.registry.jobs()
        latest = {j.name: max(x.version for x in jobs if x.name == j.name) for j in jobs}
        return ok(m.JobList([job_info(j, j.version == latest[j.name]) for j in jobs]))

    async def cluster(self, request: Request) -> Response:
        rows = await self.api.ops().reads.nodes(NODE_SEEN_WITHIN)
        return ok(m.Cluster([m.Node(**r) for r in rows]))

    async def whoami(self, request: Request) -> Response:
        if not self.api.tokens:
            return ok(m.WhoAmI(Scope.MANAGE.value, False))
        have = self.api.presented_scope(request)  # guarded: known by now
        assert have is not None
        return ok(m.WhoAmI(have.value, True))
