"""The metrics the functions emit, as shared/src/metrics.rs declares them (one list for the
Rust code, the template checks and the end-to-end test), and the EMF documents in a log.
"""

import json
import re
from pathlib import Path

METRICS_RS = Path(__file__).resolve().parents[2] / "shared" / "src" / "metrics.rs"


def _source() -> str:
    return METRICS_RS.read_text(encoding="utf-8")


def declared_metrics() -> dict[str, str]:
    """Metric name -> CloudWatch unit, from the `Metric::new("Name", Unit::X)` constants."""
    found = dict(re.findall(r'Metric::new\("(\w+)", Unit::(\w+)\)', _source()))
    if not found:
        raise AssertionError(f"no metric declared in {METRICS_RS}")
    return found


def declared_str(constant: str) -> str:
    """The value of `pub const <constant>: &str = "...";` in metrics.rs."""
    match = re.search(rf'pub const {constant}: &str = "([^"]*)";', _source())
    if match is None:
        raise AssertionError(f"{constant} is not declared in {METRICS_RS}")
    return match.group(1)


def _document(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) and "_aws" in value else None


def documents(log: str) -> list[dict]:
    """The EMF documents of a log: whole lines that are JSON objects with `_aws`."""
    return [d for d in map(_document, log.splitlines()) if d is not None]


def broken_lines(log: str) -> list[str]:
    """Lines that hold part of an EMF document but are not one whole document: what a
    log line written into the middle of a metrics line (or the reverse) leaves."""
    return [line for line in log.splitlines() if "CloudWatchMetrics" in line and _document(line) is None]


def problems(document: dict, metrics: dict[str, str], namespace: str) -> list[str]:
    """What keeps `document` from being an EMF document of ours."""
    found = []
    aws = document.get("_aws", {})
    if not isinstance(aws.get("Timestamp"), int):
        found.append(f"Timestamp is not an integer: {aws}")
    for directive in aws.get("CloudWatchMetrics", []):
        if directive.get("Namespace") != namespace:
            found.append(f"namespace {directive.get('Namespace')}")
        listed = directive.get("Metrics", [])
        if not 1 <= len(listed) <= 100:
            found.append(f"{len(listed)} metrics in one directive")
        for metric in listed:
            name = metric.get("Name")
            if metrics.get(name) != metric.get("Unit"):
                found.append(f"{name}: unit {metric.get('Unit')}, declared {metrics.get(name)}")
            if not isinstance(document.get(name), (int, float)):
                found.append(f"{name}: value {document.get(name)!r} is not a number")
        for dimension_set in directive.get("Dimensions", []):
            for dimension in dimension_set:
                if not isinstance(document.get(dimension), str):
                    found.append(f"dimension {dimension} is not a string member")
    return found
