"""Log lines that know their workflow: structlog and stdlib ``logging`` wired to the spans.

Two structlog processors do the work: :func:`add_trace_context` puts ``trace_id``,
``span_id``, ``run_id``, ``workflow_id`` and ``step`` on every event, and
:func:`record_span_event` copies warnings and errors onto the current span as a ``log`` event
(``log.severity``, ``log.message``, ``log.logger``), which the history processor keeps on the
step's row and the collector shows in the trace. :func:`install_logging_bridge` does the same
for stdlib records: a record factory sets the five ids as record attributes (usable as
``%(trace_id)s``) and mirrors warnings and errors onto the span.
:func:`configure_logging` sets all of it up with a JSON or console renderer on stderr. Every line
passes through flowtel's redaction (:mod:`instrumentation.redaction`): structlog events (message,
fields, the rendered traceback) in the chain, stdlib records (message, traceback, stack) as the
bridge creates them, so neither the console nor a span sees a secret.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from instrumentation import attributes as attr
from instrumentation.clean import clean_text
from instrumentation.limits import get_limits
from instrumentation.redaction import get_redactor, redaction_processor
from instrumentation.runs import current_run

__all__ = [
    "ID_KEYS",
    "LOG_FORMATS",
    "add_log_event",
    "add_trace_context",
    "configure_logging",
    "current_ids",
    "install_logging_bridge",
    "record_span_event",
    "redact_record",
    "uninstall_logging_bridge",
]

ID_KEYS = ("trace_id", "span_id", "run_id", "workflow_id", "step")
"""The keys added to every structlog event and set on every stdlib record."""
LOG_FORMATS = ("json", "console")

_SEVERITY = {
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "exception": "error",
    "critical": "critical",
    "fatal": "critical",
}
_NOT_EXTRA = frozenset(
    {*ID_KEYS, "event", "level", "timestamp", "logger", "exc_info", "stack_info", "exception"}
    | {"_record", "_from_structlog"}
)
_guard = threading.local()


def current_ids() -> dict[str, str]:
    """The ids of the current span and workflow run (only the ones that exist)."""
    span = trace.get_current_span()
    context = span.get_span_context()
    ids: dict[str, str] = {}
    if context.is_valid:
        ids["trace_id"] = trace.format_trace_id(context.trace_id)
        ids["span_id"] = trace.format_span_id(context.span_id)
    run = current_run()
    if run is not None:
        ids["run_id"] = run.run_id
        ids["workflow_id"] = run.workflow_id
        attributes = getattr(span, "attributes", None)
        step = attributes.get(attr.STEP_NAME) if attributes is not None else None
        if step is not None:
            ids["step"] = str(step)
    return ids


def add_log_event(severity: str, message: str, logger_name: str | None = None) -> bool:
    """Add a ``log`` event to the current span if it is recording; True if one was added."""
    if getattr(_guard, "active", False):
        return False  # the SDK logging about our own add_event: never recurse
    span = trace.get_current_span()
    if not span.is_recording():
        return False
    _guard.active = True
    try:
        attributes = {
            attr.LOG_SEVERITY: severity,
            attr.LOG_MESSAGE: clean_text(message, get_limits().log_line_bytes),
        }
        if logger_name:
            attributes[attr.LOG_LOGGER] = logger_name
        span.add_event(attr.LOG_EVENT, attributes)
        return True
    finally:
        _guard.active = False


def add_trace_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: add ``trace_id``, ``span_id``, ``run_id``, ``workflow_id``, ``step``."""
    for key, value in current_ids().items():
        event_dict.setdefault(key, value)
    return event_dict


def record_span_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mirror warnings and errors onto the current span as ``log`` events.

    The message is the event text followed by its other keys as ``key=value`` (secret-looking
    keys redacted). Never raises.
    """
    try:
        level = event_dict.get("level", method_name)
        severity = _SEVERITY.get(str(level).lower())
        if severity is not None:
            extras = {k: v for k, v in event_dict.items() if k not in _NOT_EXTRA}
            message = str(event_dict.get("event", ""))
            if extras:
                clean = get_redactor().redact({k: _plain(v) for k, v in extras.items()})
                message += " " + " ".join(f"{k}={v}" for k, v in clean.items())
            logger_name = event_dict.get("logger")
            add_log_event(severity, message, str(logger_name) if logger_name else None)
    except Exception:  # pragma: no cover - logging must never break the caller
        pass
    return event_dict


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else repr(value)


def _mirror(record: logging.LogRecord) -> None:
    """Add a warning-or-worse stdlib record to the current span (never raises)."""
    try:
        if record.name.startswith("opentelemetry") or isinstance(record.msg, dict):
            return  # the SDK's own chatter, or a structlog event (mirrored by its processor)
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            message = f"{message}: {type(error).__name__}: {error}"
        add_log_event(_SEVERITY.get(record.levelname.lower(), "warning"), message, record.name)
    except Exception:  # pragma: no cover - logging must never break the caller
        pass


_TRACEBACKS = logging.Formatter()


def redact_record(record: logging.LogRecord) -> None:
    """Mask secrets in a stdlib record in place, for every handler that formats it afterwards.

    The message is formatted once and, when redaction changes it, replaces ``msg`` (``args``
    emptied); a record's exception becomes its masked traceback text in ``exc_text``, which
    :class:`logging.Formatter` prints instead of formatting ``exc_info`` again; ``stack_info``
    is masked too. Records that hold nothing to mask keep their ``msg`` and ``args``. Never
    raises.
    """
    try:
        if isinstance(record.msg, dict):
            return  # a structlog event on its way to ProcessorFormatter: redacted by its chain
        redactor = get_redactor()
        message = record.getMessage()
        if not redactor.is_plain(message):
            clean = redactor.redact_text(message)
            if clean != message:
                record.msg, record.args = clean, ()
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = redactor.redact_text(_TRACEBACKS.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = redactor.redact_text(record.stack_info)
    except Exception:  # pragma: no cover - logging must never break the caller
        pass


_bridge: Callable[..., logging.LogRecord] | None = None


def install_logging_bridge(level: int = logging.WARNING) -> None:
    """Give every stdlib record the five ids, mask its secrets, mirror *level*+ onto the span.

    Idempotent. A wrapping record factory redacts each record as it is created
    (:func:`redact_record`), so no handler, flowtel's or the application's, prints a secret;
    sets ``trace_id``, ``span_id``, ``run_id``, ``workflow_id`` and ``step`` on it (``None``
    when unknown); and adds a ``log`` event for records at *level* or above. Records are only
    created for enabled levels, so logger levels apply; no handler is added, so
    ``logging.basicConfig`` keeps working.
    """
    global _bridge
    if _bridge is not None:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        ids = current_ids()
        for key in ID_KEYS:
            setattr(record, key, ids.get(key))
        if isinstance(record.levelno, int) and record.levelno >= level and "span_id" in ids:
            _mirror(record)
        return record

    logging.setLogRecordFactory(factory)
    _bridge = previous


def uninstall_logging_bridge() -> None:
    """Undo :func:`install_logging_bridge` (restores the previous record factory)."""
    global _bridge
    if _bridge is not None:
        logging.setLogRecordFactory(_bridge)
        _bridge = None


def _ids_from_record(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    record = event_dict.get("_record")
    for key in ID_KEYS:
        value = getattr(record, key, None)
        if value is not None:
            event_dict.setdefault(key, value)
    return event_dict


def configure_logging(
    fmt: str = "auto", level: int | str = "INFO", stream: TextIO | None = None
) -> str:
    """Configure structlog (and stdlib output, if it has none) with flowtel's processors.

    Args:
        fmt: ``json``, ``console`` or ``auto`` (``FLOWTEL_LOG_FORMAT``, else console on a
            terminal and JSON otherwise).
        level: the lowest structlog level written (``FLOWTEL_LOG_LEVEL`` overrides ``INFO``).
        stream: where to write (default: stderr).

    Returns:
        The format chosen.

    Raises:
        ValueError: *fmt* is not one of ``json``, ``console``, ``auto``.
    """
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = os.environ.get("FLOWTEL_LOG_FORMAT") or ("console" if out.isatty() else "json")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}: use 'json', 'console' or 'auto'")
    if level == "INFO":
        level = os.environ.get("FLOWTEL_LOG_LEVEL", "INFO")
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Exceptions become text before redaction, so tracebacks are masked in both formats.
    tail: list[Processor] = [
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redaction_processor,
    ]
    structlog.configure(
        processors=[*shared, add_trace_context, record_span_event, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    install_logging_bridge()
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(out)
        handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redaction_processor,
                    renderer,
                ],
                foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name, _ids_from_record],
            )
        )
        root.addHandler(handler)  # like logging.basicConfig: only when nothing is configured
    return fmt
