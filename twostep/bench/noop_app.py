"""Ray Serve's own floor for one request: a FastAPI ingress that answers a POST and does nothing.

`twostep bench`'s edge deploys it beside twostep's apps (same Ray session, same ingress), and
calibration times it next to the device path, so the device path's fixed cost per request is
compared with what Serve itself costs on this machine in the same run.
"""

# No `from __future__ import annotations`: FastAPI resolves the route's annotations at run time.

from fastapi import FastAPI, Request
from ray import serve

ROUTE = "/noop"
noop_api = FastAPI()


@serve.deployment(name="Noop", ray_actor_options={"num_cpus": 0.05})
@serve.ingress(noop_api)
class Noop:
    @noop_api.post("/")
    async def answer(self, request: Request) -> dict:
        await request.body()
        return {}


def noop_target() -> serve.RunTarget:
    """The no-op application, to deploy beside twostep's (`serve.app.deploy(..., also=...)`)."""
    return serve.RunTarget(Noop.bind(), name="noop", route_prefix=ROUTE,
                           logging_config={"enable_access_log": False})
