"""Shared fixtures for the conformance tests: the official provider SDKs against the emulator.

Every test gets its own emulator process (its control endpoints change global state such
as "finish every batch"), started from the binary built once per session by
`cargo build -p batchline-emulator --bin provider-emulator`. Set EMULATOR_BIN to use a
binary that is already built instead. Bedrock tests use `bedrock_emulator`, an emulator
pointed at `moto`, a moto server (S3) started once per session from the workspace venv
(or MOTO_SERVER).

Helpers: `advance(base_url, batch_id=None)` and `set_faults(base_url, plan)` drive the
emulator's control endpoints (not part of any provider API); `conforms(SdkType, data)`
checks a wire object strictly against an SDK type; `wait_for(fetch, done)` polls.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydantic
import pytest

WORKSPACE = Path(__file__).resolve().parents[2]
STEP_MS = 50
START_TIMEOUT_S = 30


@pytest.fixture(scope="session")
def emulator_binary():
    """Path of the provider-emulator binary, built if not given."""
    given = os.environ.get("EMULATOR_BIN")
    if given:
        return Path(given)
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "batchline-emulator", "--bin", "provider-emulator"],
        cwd=WORKSPACE,
        check=True,
    )
    return WORKSPACE / "target" / "debug" / "provider-emulator"


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(process, port):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited early with status {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"emulator did not listen on port {port} within {START_TIMEOUT_S}s")


@contextlib.contextmanager
def serving(command, port, stderr=None):
    """Runs `command` (a server listening on `port`) for the duration of the block."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until_listening(process, port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_emulator(binary, *extra_args, step_ms=STEP_MS):
    port = free_port()
    command = [str(binary), "--port", str(port), "--step-ms", str(step_ms), *extra_args]
    return serving(command, port)


@pytest.fixture
def emulator(emulator_binary):
    """Base URL (`http://127.0.0.1:PORT`) of a fresh emulator, stopped after the test."""
    with start_emulator(emulator_binary) as url:
        yield url


@pytest.fixture(scope="session")
def moto():
    """Base URL of a moto server (S3 for Bedrock batch input and output), stopped after the session."""
    binary = os.environ.get("MOTO_SERVER") or str(Path(sys.prefix) / "bin" / "moto_server")
    port = free_port()
    # moto logs every request on stderr.
    with serving([binary, "-H", "127.0.0.1", "-p", str(port)], port, stderr=subprocess.DEVNULL) as url:
        yield url


# Bedrock tests stop jobs while they run: steps long enough that a call lands in the
# state it aims at on a busy machine.
BEDROCK_STEP_MS = 250


@pytest.fixture
def bedrock_emulator(emulator_binary, moto):
    """Base URL of a fresh emulator whose Bedrock jobs use the `moto` S3."""
    with start_emulator(emulator_binary, "--s3-endpoint", moto, step_ms=BEDROCK_STEP_MS) as url:
        yield url


def advance(base_url, batch_id=None):
    """Moves one batch (or, without an id, every batch) past all its lifecycle stages."""
    body = {} if batch_id is None else {"batch_id": batch_id}
    post_control(f"{base_url}/_emulator/advance", body)


def set_faults(base_url, plan):
    """Replaces the emulator's fault plan (batch_fate, partial, http, drop_results_after_bytes)."""
    post_control(f"{base_url}/_emulator/faults", plan)


def post_control(url, body):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    # urlopen raises on any HTTP error status.
    with urllib.request.urlopen(request, timeout=10):
        pass


def conforms(model_cls, data):
    """Validates `data` as the SDK type `model_cls`, strictly.

    The SDKs build response objects leniently (no validation, unknown fields kept), so a
    wrong wire shape would go unnoticed through them: this runs pydantic validation and
    fails on any field the type does not declare, at any depth.
    """
    model = model_cls.model_validate(data)
    assert_declared_fields_only(model, model_cls.__name__)
    return model


def assert_declared_fields_only(value, path):
    if isinstance(value, pydantic.BaseModel):
        extra = value.model_extra or {}
        assert not extra, f"{path}: fields the SDK type does not declare: {sorted(extra)}"
        for name in type(value).model_fields:
            assert_declared_fields_only(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            assert_declared_fields_only(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            assert_declared_fields_only(item, f"{path}.{key}")


def wait_for(fetch, done, timeout_s=10):
    """Calls `fetch` until `done(result)` holds; answers the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(STEP_MS / 1000)
