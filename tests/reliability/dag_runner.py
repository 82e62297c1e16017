"""Run ``superres_daily`` for one date with ``dag.test()`` in its own process.

    python -m tests.reliability.dag_runner --ds 2026-01-05 --conf '{"num_images": 1}' \
        --out result.json [--no-retries]

Tests start several of these at once (concurrent dates, the same date twice) or
send one a SIGTERM, as Airflow's kill would.  Each process gets its own copy of
the migrated metadata DB through AIRFLOW_HOME; storage, staging and the
notifier are shared through the SUPERRES_* environment.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--ds", required=True)
    p.add_argument("--conf", default="{}")
    p.add_argument("--out", required=True)
    p.add_argument("--no-retries", action="store_true")
    args = p.parse_args()

    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import ROOT

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    dag = bag.dags["superres_daily"]
    if args.no_retries:
        for t in dag.tasks:
            t.retries = 0
    dr = dag.test(logical_date=datetime.fromisoformat(args.ds).replace(tzinfo=UTC),
                  run_conf=json.loads(args.conf))
    tis = {ti.task_id: {"state": getattr(ti.state, "value", ti.state), "try_number": ti.try_number}
           for ti in dr.get_task_instances()}
    state = getattr(dr.state, "value", dr.state)
    Path(args.out).write_text(json.dumps({"state": state, "run_id": dr.run_id, "tasks": tis}))
    return 0 if dr.state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
