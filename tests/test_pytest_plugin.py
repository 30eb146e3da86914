"""The ``flowtel_history`` pytest fixture, as a user's own test suite meets it (``pytester``).

Each case writes a small test module of the kind a flowtel user would write, runs pytest on it
in a child process with the plugin loaded, and checks the outcome. The ``pytest11`` entry
point in ``pyproject.toml`` names the same module.
"""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = """
import pytest
from instrumentation import step, workflow, workflow_run


class BiosError(Exception):
    pass


def provision(server_id, bad_bios=False):
    with workflow_run("provision_server", workflow_id=f"provision_{server_id}") as run:
        with run.step("select_machine"):
            pass
        with run.step("verify_bios_settings"):
            if bad_bios:
                raise BiosError("SR-IOV disabled")


@step
def wipe(server_id):
    return server_id


@workflow(workflow_id=lambda server_id: f"decommission_{server_id}")
def decommission(server_id):
    wipe(server_id)
"""


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project: their instrumented code, with this checkout importable."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("FLOWTEL_DATABASE_URL", raising=False)
    pytester.makepyfile(provisioning=USER_CODE)
    return pytester


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    """pytest in a child process with the plugin loaded as the entry point would load it."""
    return pytester.runpytest_subprocess("-p", "no:flowtel", "-p", "exporters.testing", "-q")


def test_a_failed_run_at_a_step_is_asserted_in_a_few_lines(user_suite: pytest.Pytester) -> None:
    """assert_run checks the workflow, status and failed step; spans and URL are exposed."""
    user_suite.makepyfile(
        test_user="""
        import pytest
        from sqlalchemy import create_engine, text
        from provisioning import BiosError, decommission, provision

        def test_bad_bios_fails_at_verify(flowtel_history):
            with pytest.raises(BiosError):
                provision("srv-1", bad_bios=True)
            run = flowtel_history.assert_run(
                "provision_server", status="failed", failed_step="verify_bios_settings"
            )
            assert run.workflow_id == "provision_srv-1"
            assert flowtel_history.assert_run("provision_server", error_type="BiosError")
            names = [s.name for s in flowtel_history.finished_spans()]
            assert names == ["select_machine", "verify_bios_settings", "provision_server"]
            engine = create_engine(flowtel_history.database_url)
            with engine.connect() as conn:
                count = conn.execute(text("select count(*) from workflow_history")).scalar()
            assert count == 1

        def test_decorated_workflow_completes(flowtel_history):
            decommission("srv-2")
            flowtel_history.assert_run("decommission", status="completed")
            assert [r.workflow_id for r in flowtel_history.runs()] == ["decommission_srv-2"]
        """
    )
    result = run(user_suite)
    result.assert_outcomes(passed=2)


def test_a_wrong_expectation_fails_saying_what_was_recorded(user_suite: pytest.Pytester) -> None:
    """A run that did not happen fails the user's test with the runs that did."""
    user_suite.makepyfile(
        test_user="""
        from provisioning import provision

        def test_expects_a_failure(flowtel_history):
            provision("srv-3")
            flowtel_history.assert_run("provision_server", status="failed",
                                       failed_step="verify_bios_settings")
        """
    )
    result = run(user_suite)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*no 'provision_server' run recorded with status='failed'*"
            "recorded: provision_srv-3 completed*"
        ]
    )


def test_every_test_gets_its_own_history(user_suite: pytest.Pytester) -> None:
    """Runs of one test are not seen by the next; nothing warns that nothing records."""
    user_suite.makepyfile(
        test_user="""
        from provisioning import provision

        def test_first(flowtel_history):
            provision("srv-4")
            assert len(flowtel_history.runs()) == 1

        def test_second(flowtel_history):
            provision("srv-5")
            assert [r.workflow_id for r in flowtel_history.runs()] == ["provision_srv-5"]
            assert len(flowtel_history.finished_spans()) == 3
        """
    )
    result = run(user_suite)
    result.assert_outcomes(passed=2)
    assert "no history processor" not in result.stdout.str() + result.stderr.str()


def test_the_entry_point_names_the_plugin() -> None:
    """pyproject.toml registers the module that holds the fixture under pytest11."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["pytest11"]["flowtel"]
    assert callable(importlib.import_module(target).flowtel_history)


def test_runs_are_recorded_under_the_applications_zero_percent_sampler(
    user_suite: pytest.Pytester,
) -> None:
    """With the app's provider on TraceIdRatioBased(0.0) every run is recorded, spans too,
    and the app's sampler is back in place after the test."""
    user_suite.makeconftest(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        trace.set_tracer_provider(TracerProvider(sampler=TraceIdRatioBased(0.0)))
        """
    )
    user_suite.makepyfile(
        test_user="""
        from opentelemetry import trace
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
        from instrumentation import workflow_run
        from provisioning import provision

        def test_recorded_whatever_the_sampler(flowtel_history):
            with workflow_run("warm_up"):  # a tracer the app made before the fixture ran
                pass
            provision("srv-6")
            flowtel_history.assert_run("provision_server", status="completed")
            flowtel_history.assert_run("warm_up", status="completed")
            assert len(flowtel_history.finished_spans()) == 4

        def test_the_apps_sampler_is_restored_afterwards():
            assert isinstance(trace.get_tracer_provider().sampler, TraceIdRatioBased)
        """
    )
    result = run(user_suite)
    result.assert_outcomes(passed=2)


def test_a_test_never_writes_into_the_database_the_app_configured_at_import(
    user_suite: pytest.Pytester, tmp_path: Path
) -> None:
    """The app calls configure() at import on its own database: the fixture's runs land only
    in the throwaway history, none in the app's, and the app's processor is back afterwards."""
    real = tmp_path / "real-history.db"
    user_suite.makeconftest(
        f"""
        import exporters

        APP = exporters.configure(database_url="sqlite:///{real}", otlp=False, metrics=False,
                                  logs=False)
        """
    )
    user_suite.makepyfile(
        test_user=f"""
        import sqlalchemy as sa
        from conftest import APP
        from provisioning import provision

        def test_recorded_in_the_throwaway_history_only(flowtel_history):
            provision("srv-7")
            flowtel_history.assert_run("provision_server", status="completed")
            assert flowtel_history.database_url != "sqlite:///{real}"

        def test_the_real_history_holds_no_run_of_the_test():
            assert APP.force_flush(10_000)
            engine = sa.create_engine("sqlite:///{real}")
            with engine.connect() as conn:
                count = conn.execute(sa.text("select count(*) from workflow_history")).scalar()
            engine.dispose()
            assert count == 0
        """
    )
    result = run(user_suite)
    result.assert_outcomes(passed=2)


def test_a_sampler_that_cannot_be_wrapped_fails_at_set_up_saying_why(
    user_suite: pytest.Pytester,
) -> None:
    """A provider whose sampler cannot be replaced and drops everything: the fixture errors at
    set-up naming the sampler and AuditSampler, instead of a test that finds no run."""
    user_suite.makeconftest(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

        class Stubborn(TracerProvider):
            @property
            def sampler(self):
                return TraceIdRatioBased(0.0)

            @sampler.setter
            def sampler(self, value):
                pass

        trace.set_tracer_provider(Stubborn())
        """
    )
    user_suite.makepyfile(
        test_user="""
        def test_never_reached(flowtel_history):
            raise AssertionError("the fixture should have refused")
        """
    )
    result = run(user_suite)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*flowtel_history cannot record*TraceIdRatioBased*AuditSampler*"])
