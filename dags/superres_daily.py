"""superres_daily: fetch photos -> Spark split / inference / reconstruct -> report.

Wiring only: every task's logic lives in the ``superres`` package.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import Param, TriggerRule, chain, dag, task

from superres.config import Settings
from superres.orchestration.operators import SparkJobOperator

DOC = """
### superres_daily

Super-resolves a daily batch of photos with FSRCNN.

1. **resolve**: the run date (param `ds`, else `logical_date`, else `run_after`) and settings.
2. **fetch**: N photos chosen deterministically from the date, from Picsum (or the offline
   source), into `raw/ds=YYYY-MM-DD/` with a manifest; bad bodies are quarantined.
3. **split / inference / reconstruct**: Spark jobs (`spark_jobs/`) through `spark_default`:
   halo tiles to Parquet, batched FSRCNN, stitched PNGs into `sr/ds=YYYY-MM-DD/`.
4. **quality**: Great Expectations suites on the manifest, tiles, SR tiles and outputs
   (`reports/ds=…/quality.json`); a failed gate stops the run before anything is published.
5. **evaluate**: per-image PSNR/SSIM of SR and bicubic (evaluate mode) in Spark, the
   regression gate (SR must beat bicubic), then publish `sr/ds=…/`, `metrics.json` and
   comparison images.
6. **report**: `reports/ds=YYYY-MM-DD/run.json` with counts that must reconcile
   (fetched = processed + quarantined), timings and config.
7. **notify**: a signed callback to the notifier, sent even when an earlier task failed.

Every task writes only its date's partition and a rerun replaces it, so backfills and
clears are safe. Params are editable in the trigger form.
"""

default_args = {
    "owner": "superres",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    # A hung task fails (and is retried) instead of holding its run forever: SUPERRES_TASK_TIMEOUT_S.
    "execution_timeout": timedelta(seconds=Settings.from_env().task_timeout_s),
}


@dag(
    dag_id="superres_daily",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    # Two dates may run side by side (backfills); more would only fight over the cores.
    max_active_runs=2,
    default_args=default_args,
    tags=["superres", "spark", "fsrcnn"],
    doc_md=DOC,
    params={
        "num_images": Param(8, type="integer", minimum=1, maximum=1000, title="Photos",
                            description="How many photos to fetch for the date (1-1000)."),
        "scale": Param(2, type="integer", enum=[2, 3, 4], title="Scale",
                       description="Upscaling factor: the output is this many times the input's size."),
        "tile_size": Param(192, type="integer", minimum=16, maximum=2048, title="Tile size (px)",
                           description="Each photo is cut into even tiles no larger than this "
                                       "(512 px: 3 x 171)."),
        "image_width": Param(512, type="integer", minimum=16, maximum=5000, title="Photo width (px)",
                             description="Width of the photos asked of the source."),
        "image_height": Param(512, type="integer", minimum=16, maximum=5000, title="Photo height (px)",
                              description="Height of the photos asked of the source."),
        "mode": Param("evaluate", type="string", enum=["evaluate", "upscale"], title="Mode",
                      description="evaluate: downscale each photo, super-resolve it and score it "
                                  "against the original and bicubic; upscale: super-resolve the "
                                  "photo as it is (no ground truth, so no PSNR)."),
        "ds": Param(None, type=["null", "string"], format="date", title="Run date",
                    description="YYYY-MM-DD. Leave empty to use the run's logical date (or run_after)."),
    },
)
def superres_daily():
    @task
    def resolve(params=None, dag_run=None, run_id=None):
        from superres.orchestration.run import resolve as describe

        return describe(dict(params or {}), run_id, dag_run.logical_date, dag_run.run_after)

    @task
    def fetch(run: dict):
        from superres.orchestration import tasks

        return tasks.fetch(run)

    @task
    def report(run: dict):
        from superres.orchestration import tasks

        return tasks.report(run)

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=5)
    def notify(run: dict | None = None, **context):
        from superres.orchestration.notify import notify as send

        return send(run, context)

    @task(trigger_rule=TriggerRule.ONE_FAILED, retries=0)
    def watcher():
        """Fails the run when any pipeline task failed (notify, a leaf, would otherwise hide it)."""
        raise RuntimeError("a pipeline task failed; see the failed task's log")

    run = resolve()
    spark = [SparkJobOperator(task_id=job, job=job)
             for job in ("split", "inference", "reconstruct", "quality", "evaluate")]
    pipeline = [fetch(run), *spark, report(run)]
    chain(*pipeline, notify(run))
    [run, *pipeline] >> watcher()


superres_daily()
