"""deploy/: what can be checked without Docker — the compose file, Grafana's files, the SQL.

The compose file must parse and mount the very ``otel-collector.yaml`` the tests run the real
collector with (and that file must validate with the compose file's environment); Grafana's data
source must point at the compose file's PostgreSQL; and every SQL query of the dashboard, its
Grafana macros expanded, must run against a real PostgreSQL holding flowtel's schema and rows.
"""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from opentelemetry.sdk.trace import TracerProvider

from exporters import create_schema
from instrumentation import workflow_run
from tests.collector_support import CONFIG, ROOT, collector_binary
from tests.conftest import _SWITCHBOARD, History

DEPLOY = ROOT / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana/dashboards/flowtel-history.json").read_text())
DATASOURCES = yaml.safe_load(
    (DEPLOY / "grafana/provisioning/datasources/flowtel.yaml").read_text()
)["datasources"]
WORKFLOWS = ("provision_server", "decommission_server")


def queries() -> list[tuple[str, str]]:
    """(title, SQL) of every panel target and every query variable of the dashboard."""
    found = [(p["title"], t["rawSql"]) for p in DASHBOARD["panels"] for t in p["targets"]]
    found += [
        (f"variable {v['name']}", v["query"])
        for v in DASHBOARD["templating"]["list"]
        if v["type"] == "query"
    ]
    return found


def expand(sql: str) -> str:
    """Grafana's PostgreSQL macros and the dashboard's variables, as Grafana would expand them."""
    sql = re.sub(
        r"\$__timeGroupAlias\(([\w.]+),\s*\$__interval\)",
        r"""to_timestamp(floor(extract(epoch from \1) / 300) * 300) AS "time\"""",
        sql,
    )
    sql = re.sub(
        r"\$__timeFilter\(([\w.]+)\)",
        r"\1 BETWEEN now() - interval '1 day' AND now() + interval '1 minute'",
        sql,
    )
    sql = sql.replace("$workflow", ", ".join(f"'{w}'" for w in WORKFLOWS))
    assert "$" not in sql, f"unexpanded macro or variable in: {sql}"
    return sql


def service(name: str) -> dict[str, Any]:
    return dict(COMPOSE["services"][name])


def test_compose_mounts_the_collector_config_the_tests_run() -> None:
    assert {"otel-collector", "jaeger", "postgres", "grafana"} <= set(COMPOSE["services"])
    collector = service("otel-collector")
    (mount,) = collector["volumes"]
    source, target, mode = mount.split(":")
    assert (DEPLOY / source).resolve() == CONFIG.resolve() and mode == "ro"
    assert collector["command"] == [f"--config={target}"]
    assert collector["environment"]["FLOWTEL_TRACES_BACKEND"] == "jaeger:4317"


def test_compose_files_exist_and_ports_stay_on_loopback() -> None:
    for name, spec in COMPOSE["services"].items():
        for mount in spec.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
        for port in spec.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    build = service("demo")["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_grafana_reads_the_compose_postgres_and_the_dashboard() -> None:
    (source,) = DATASOURCES
    postgres = service("postgres")["environment"]
    assert source["url"] == "postgres:5432" and source["user"] == postgres["POSTGRES_USER"]
    assert source["jsonData"]["database"] == postgres["POSTGRES_DB"]
    assert source["secureJsonData"]["password"] == postgres["POSTGRES_PASSWORD"]
    used = {p["datasource"]["uid"] for p in DASHBOARD["panels"]}
    assert used == {source["uid"]}
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/flowtel.yaml").read_text()
    )["providers"][0]
    mounts = dict(reversed(m.split(":")[:2]) for m in service("grafana")["volumes"])
    assert (DEPLOY / mounts[provider["options"]["path"]] / "flowtel-history.json").is_file()


def test_the_collector_config_validates_with_the_compose_environment() -> None:
    environment = {k: str(v) for k, v in service("otel-collector")["environment"].items()}
    result = subprocess.run(
        [collector_binary(), "validate", f"--config={CONFIG}"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def postgres_history(server_database: dict[str, str], tracer_provider: TracerProvider) -> sa.Engine:
    """A PostgreSQL history holding completed, retried and failed runs of two workflows."""
    url = server_database["postgresql"]
    engine = sa.create_engine(url)
    create_schema(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM workflow_step_history"))
        connection.execute(sa.text("DELETE FROM workflow_history"))
    recorder = History(url, trace_url_template="http://localhost:16686/trace/{trace_id}")
    _SWITCHBOARD.targets.append(recorder.processor)
    for n in range(8):
        try:
            with workflow_run(WORKFLOWS[n % 2], context={"server_id": f"srv-{n}"}) as run:
                with run.step("select_machine"):
                    pass
                with run.step("configure_ipmi") as step:
                    if n == 1:
                        step.retrying("no answer")
                if n in (2, 5):
                    with run.step("verify_bios"):
                        raise ValueError("SR-IOV disabled")
        except ValueError:
            pass
    recorder.flush()
    recorder.processor.shutdown(10_000)
    return engine


def test_every_dashboard_query_runs_on_postgresql(postgres_history: sa.Engine) -> None:
    results = {}
    with postgres_history.connect() as connection:
        for title, sql in queries():
            rows = connection.execute(sa.text(expand(sql))).mappings().all()
            assert rows, f"{title}: no rows"
            results[title] = rows
    postgres_history.dispose()
    assert results["Runs"][0]["runs"] == 8
    assert results["Failure rate"][0]["failure rate"] == 25  # 2 of 8
    top = results["Top failing steps"]  # one row per (step, workflow)
    assert {(r["step"], r["workflow"], r["failures"]) for r in top} == {
        ("verify_bios", "provision_server", 1),
        ("verify_bios", "decommission_server", 1),
    }
    recent = results["Recent failed runs"]
    assert len(recent) == 2 and all(r["failed step"] == "verify_bios" for r in recent)
    assert all(r["trace link"].endswith(r["trace id"]) for r in recent)
    statuses = {r["metric"] for r in results["Runs by status"]}
    assert statuses == {"completed", "failed"}
    assert {r["workflow"] for r in results["Duration per workflow"]} == set(WORKFLOWS)
    assert [r["workflow_name"] for r in results["variable workflow"]] == sorted(WORKFLOWS)
