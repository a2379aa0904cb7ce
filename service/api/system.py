"""/healthz, /workers."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service import db
from service.api.deps import ReadAccess, StateDep
from service.api.schemas import WorkerList
from service.queue.demand import demand
from service.tables import gt_workers

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and both schemas are current")
def readyz(state: StateDep) -> JSONResponse:
    problems = db.schema_problems(state.settings)
    if problems:
        return JSONResponse({"status": "not ready", "problems": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/workers",
    dependencies=[ReadAccess],
    summary="Worker processes, their devices and trials",
    response_model=None,  # the dict goes out as it is, isoformat times included
    responses={200: {"model": WorkerList, "description": "every registered worker, oldest first"}},
)
def list_workers(state: StateDep) -> dict[str, Any]:
    """A worker whose heartbeat is older than a lease (GAT_TUNE_LEASE_SECONDS, as this server
    reads it) is "lost": it died or cannot reach the database. The reaper takes it off the
    list after WORKER_PRUNE_LEASES leases. ``demand``: the count the autoscaler reads."""
    with state.engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        rows = conn.execute(sa.select(gt_workers).order_by(gt_workers.c.started_at)).all()
        wanted = demand(conn)
    lease = state.settings.lease_seconds
    return {
        "items": [
            {
                "id": r.id,
                "host": r.host,
                "pid": r.pid,
                "device": r.device,
                "status": "lost" if (now - r.last_heartbeat).total_seconds() > lease else r.status,
                "current_trial_id": r.current_trial_id,
                "started_at": r.started_at.isoformat(),
                "last_heartbeat": r.last_heartbeat.isoformat(),
                "seconds_since_heartbeat": round((now - r.last_heartbeat).total_seconds(), 3),
            }
            for r in rows
        ],
        "demand": {"running": wanted.running, "startable": wanted.startable, "slots_wanted": wanted.slots_wanted},
    }
