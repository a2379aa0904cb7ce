"""Creating a study whose spec carries the longest enqueue list the API accepts (issue 11).

    .venv/bin/python -m bench.create_enqueue [--entries 1000]

One POST /studies through the app (TestClient, in process) on a scratch database of the
machine's PostgreSQL; prints the seconds the request took. Each entry is a distinct
{aux_loss, lambda} pair, so nothing is skipped as a duplicate.
"""

from __future__ import annotations

import argparse
import time

import optuna
from fastapi.testclient import TestClient

from bench.scratch_database import ADMIN_URL, scratch_database
from service import db
from service.app import create_app
from service.config import Settings
from service.spec import EXAMPLE_SPEC


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--admin-url", default=ADMIN_URL)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with scratch_database(args.admin_url) as url:
        settings = Settings(DATABASE_URL=url, token="bench")
        db.upgrade(settings)
        enqueue = [{"aux_loss": "r1", "lambda": 0.01 + i * 0.05} for i in range(args.entries)]
        spec = {**EXAMPLE_SPEC, "name": "bench-enqueue", "enqueue": enqueue}
        with TestClient(create_app(settings, mount_dashboard=False), headers={"Authorization": "Bearer bench"}) as c:
            started = time.perf_counter()
            r = c.post("/studies", json=spec)
            seconds = time.perf_counter() - started
            assert r.status_code == 201, r.text
            waiting = r.json()["trial_counts"]["WAITING"]
        print(f"POST /studies with {args.entries} enqueue entries: {seconds:.2f} s ({waiting} trials waiting)")


if __name__ == "__main__":
    main()
