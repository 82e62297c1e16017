"""DAG params, as a trigger form, the REST API or a backfill would send them.

The trigger form's JSON schema (the DAG's ``Param``\\ s, validated by Airflow itself)
refuses what it can. Whatever still reaches a run and cannot make one fails
``resolve`` at once with one sentence: no retries, no ``notify`` backoff, and the
DAG run ends ``failed``.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superres.config import Settings
from superres.orchestration.run import RUN_PARAMS, RunParamsError, describe_run
from tests.conftest import ROOT
from tests.e2e.conftest import notifier_server, pipeline_env  # noqa: F401 - fixtures

WHEN = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}, bag.import_errors
    return bag.dags["superres_daily"]


def schema_accepts(dag, conf: dict[str, Any]) -> bool:
    """What Airflow does with a trigger's conf: the DAG's params with the conf on top, validated."""
    from airflow.sdk.definitions.param import ParamsDict, ParamValidationError

    params = ParamsDict()
    params.update(copy.deepcopy(dag.params))
    try:
        params.update(conf)
        params.validate()
    except ParamValidationError:
        return False
    return True


@pytest.mark.parametrize("conf", [
    {"ds": "../../x"}, {"ds": "2026-02-30"}, {"ds": "2026-1-5"}, {"ds": "2026-01-05/../x"}, {"ds": 20260105},
    {"scale": 5}, {"scale": "2"}, {"num_images": 0}, {"num_images": 1001}, {"num_images": True},
    {"tile_size": 8}, {"image_width": "wide"}, {"mode": "sharpen"}, {"mode": None},
])
def test_the_trigger_form_refuses_bad_params(dag, conf) -> None:
    assert not schema_accepts(dag, conf)


@pytest.mark.parametrize("conf", [{}, {"ds": None}, {"ds": "2026-02-28"}, {"scale": 4, "mode": "upscale"},
                                  {"num_images": 1000, "tile_size": 16}])
def test_the_trigger_form_accepts_good_params(dag, conf) -> None:
    assert schema_accepts(dag, conf)


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 6000), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["2026-01-05", "2026-02-30", "../../x", "evaluate", "upscale", "3", "2.0"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conf=st.dictionaries(st.sampled_from([*RUN_PARAMS, "ds", "picsum_url", "storage_uri"]), JSON_VALUES,
                            max_size=5))
def test_any_params_make_the_run_they_say_or_one_clear_refusal(dag, conf) -> None:
    """Schema-accepted params always make a run that holds them; anything else is a
    ``RunParamsError`` of one line, never another exception."""
    base = Settings()
    accepted = schema_accepts(dag, conf)
    try:
        run = describe_run(conf, "manual__p", None, WHEN, base=base)
    except RunParamsError as exc:
        assert not accepted, f"the schema took {conf} but the run refused it: {exc}"
        assert str(exc) and "\n" not in str(exc)
        return
    for name in RUN_PARAMS:
        if conf.get(name) is not None:
            assert run["settings"][name] == conf[name]
    # The source, storage and notifier come from configuration only.
    assert run["settings"]["picsum_url"] == base.picsum_url
    assert run["settings"]["storage_uri"] == base.storage_uri
    if conf.get("ds"):
        assert run["ds"] == conf["ds"]


def test_resolve_fails_without_a_retry(monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from superres.orchestration.run import resolve

    with pytest.raises(AirflowFailException, match=r"param ds: run date must look like YYYY-MM-DD"):
        resolve({"ds": "../../x"}, "manual__p", None, WHEN)
    monkeypatch.setenv("SUPERRES_MIN_SUCCESS_RATIO", "2")
    with pytest.raises(AirflowFailException, match="min_success_ratio must be within"):
        resolve({}, "manual__p", None, WHEN)


@pytest.mark.e2e
def test_a_run_whose_settings_cannot_work_fails_at_once_and_ends_failed(
        pipeline_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """Through real Airflow: a worker whose settings are invalid fails ``resolve`` on its first
    try; ``notify`` has no event to build and fails on its first try too, instead of five
    retries with backoff; the run is ``failed``.

    dag.test() parses the DAG file again (where a bad setting is an import error), so the
    worker's bad settings are injected where ``resolve`` loads them; tasks run in this process.
    """
    from superres.orchestration import run as run_module
    from tests.e2e.test_dag_e2e import _dag

    def bad_settings() -> Settings:
        return Settings(min_success_ratio=2.0)

    monkeypatch.setattr(run_module, "load", bad_settings)
    dag = _dag()
    dr = dag.test(logical_date=dt.datetime(2026, 1, 9, tzinfo=dt.UTC), run_conf={"num_images": 1})
    tis = {ti.task_id: ti for ti in dr.get_task_instances()}
    state = {k: getattr(ti.state, "value", ti.state) for k, ti in tis.items()}
    assert getattr(dr.state, "value", dr.state) == "failed", state
    assert state["resolve"] == "failed" and tis["resolve"].try_number == 1, state
    assert state["notify"] == "failed" and tis["notify"].try_number == 1, state
    assert state["watcher"] == "failed"
    assert state["fetch"] == "upstream_failed"


def test_every_param_has_a_short_title_and_a_description(dag) -> None:
    for name in dag.params:
        param = dag.params.get_param(name)
        title, description = param.schema.get("title") or "", param.description or ""
        assert 0 < len(title.split()) <= 3, (name, title)
        assert description.endswith("."), (name, description)
