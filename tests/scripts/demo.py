#!/usr/bin/env python3
"""`make demo`: one batchline job end to end on this machine, through the real functions.

It starts moto (S3 + SQS), the provider emulator and `cargo lambda watch` (which serves
the workspace's `submit`, `poll` and `collect` functions), uploads an example job and
drives it the way AWS would: an S3 put event to `submit`, schedule events to `poll`,
ready-queue messages to `collect`, until the job's summary is written. Everything binds
127.0.0.1 and everything started here is stopped on exit, on failure and on Ctrl-C.

The functions' environment is tests/scripts/local.env (fixed values) plus the endpoints
of the run, written together to <run dir>/lambda.env and passed with `--env-file`.
The demo job is a table: a CSV export of 100 invoices (the 20 of
events/jobs/invoices.jsonl and 80 generated ones) with the columns `invoice_id`,
`received_from`, `body` and `cost_center`, uploaded under the named pipeline `invoices`.
Its spec (`pipelines/invoices.json`: events/pipelines/invoices.json with the chosen
provider's model) builds each user message from two columns with a `template`, carries
`cost_center` into the results (`keep`), writes Parquet beside JSONL, packs five rows into
each request (`rows_per_request`) and sends the team's extraction guidelines
(events/jobs/invoice-guidelines.txt, about 1,250 tokens) as the system prompt, so that the
summary shows what packing and the providers' prompt caches do to the tokens billed. A
second upload (April: 40 invoices, 20 of them already in March) shows `skip_succeeded`.

The e2e tests import this module: `LocalPipeline` and the event builders are its API.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
VENV_BIN = ROOT / ".venv" / "bin"
LOCAL_ENV_FILE = Path(__file__).resolve().with_name("local.env")
RUNS_DIR = ROOT / ".demo"
FUNCTIONS = ("submit", "poll", "collect")
# Built before the run so that `cargo lambda watch` only starts them.
BINARIES = ("submit", "poll", "collect", "batchline-emulator")

# The model each provider's demo job asks for (names the emulator accepts).
MODELS = {
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-sonnet-4-5",
    "google": "google/gemini-2.5-flash",
    "gemini": "gemini/gemini-2.5-flash",
    "bedrock": "bedrock/amazon.nova-lite-v1:0",
}
# `make demo PROVIDER=…` also takes these spellings.
PROVIDER_ALIASES = {"vertex": "google"}

# The demo's named pipeline and its two uploads: March, then April (which overlaps it).
DEMO_PIPELINE = "invoices"
DEMO_UPLOADS = (
    ("inbox/invoices/March invoices.csv", range(1, 101)),
    ("inbox/invoices/April invoices.csv", range(81, 121)),
)
# The key the emulator requires; the functions only find it in moto's secret stores.
EMULATOR_API_KEY = "local-emulator-key"
EMULATOR_STEP_MS = 300
# Bedrock's record minimum (100 by default) is a per-account quota. The demo's second
# upload leaves 20 new rows after skipping March's, packed 5 to a request: 4 records.
# So the demo runs, on both sides, as an account whose minimum was lowered to 2.
DEMO_BEDROCK_MIN_RECORDS = 2
# The service role Bedrock jobs run as (the template's BedrockServiceRole).
DEMO_BEDROCK_ROLE_ARN = "arn:aws:iam::123456789012:role/batchline-bedrock"
# The success ledger (`skip_succeeded`), as the template names its table locally.
LEDGER_TABLE = "batchline-ledger"


class DemoError(RuntimeError):
    """The local pipeline did not do what the demo expected."""


def log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------ environment


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and `#` comments are skipped."""
    values = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep:
            raise DemoError(f"{path}: not a KEY=VALUE line: {raw!r}")
        values[name.strip()] = value.strip()
    return values


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.write_text("".join(f"{name}={value}\n" for name, value in values.items()))


def tool_env() -> dict[str, str]:
    """This process's environment with the venv first on PATH (so `cargo lambda` is
    found) and no AWS settings of the developer's that could point the tools elsewhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def build_binaries() -> float:
    """Debug build of the functions and the emulator (what `cargo lambda watch` runs)."""
    started = time.monotonic()
    argv = ["cargo", "build", "--bins"]
    for package in BINARIES:
        argv += ["-p", package]
    log(f"building: {' '.join(argv)}")
    subprocess.run(argv, cwd=ROOT, env=tool_env(), check=True)
    return time.monotonic() - started


def service_account_json(token_uri: str) -> str:
    """A throwaway service-account key whose `token_uri` is the emulator's /token, so
    that the Vertex client goes through the real JWT-bearer flow."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account = {
        "type": "service_account",
        "project_id": "demo",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "batchline-demo@demo.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }
    return json.dumps(account, indent=2)


# ------------------------------------------------------------------ processes


@dataclass
class Processes:
    """Background processes, each the leader of its own process group so that it and
    everything it spawned (cargo run, the function binaries) stop together."""

    running: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
        with log_path.open("ab") as out:
            process = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append((name, process))
        return process

    def check_alive(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                raise DemoError(f"{name} exited with status {process.returncode}")

    def stop_all(self) -> None:
        for name, process in reversed(self.running):
            stop_group(name, process)
        self.running.clear()


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc; Linux only)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name in parentheses may hold spaces: split after it.
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def stop_group(name: str, process: subprocess.Popen) -> None:
    """SIGTERM to the process group, SIGKILL after a grace period, then SIGKILL to any
    descendant that lives on in a group of its own (`cargo lambda watch` starts each
    function instance in a new group)."""
    spawned = descendants(process.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=5)
            break
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop on {sig.name}")
    for pid in spawned:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_http(url: str, what: str, timeout: float, processes: Processes) -> None:
    """Until `url` answers at all (any HTTP status means the server is up)."""
    deadline = time.monotonic() + timeout
    while True:
        processes.check_alive()
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise DemoError(f"{what} did not answer at {url} within {timeout:.0f}s") from None
            time.sleep(0.2)


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM (CI, `kill`) unwind as KeyboardInterrupt, so that `finally`
    blocks stop the background processes. Set explicitly because a shell starts
    background jobs with SIGINT ignored."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# ------------------------------------------------------------------ Lambda events


def load_event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


def s3_key_in_event(key: str) -> str:
    """Keys in S3 notifications are URL-encoded, spaces as `+`."""
    return quote_plus(key, safe="/")


def s3_put_event(bucket: str, key: str, version_id: str | None, size: int, etag: str) -> dict:
    """events/s3-put.json for a real upload."""
    event = load_event("s3-put.json")
    record = event["Records"][0]
    record["eventTime"] = utc_now()
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    obj = record["s3"]["object"]
    obj.update(key=s3_key_in_event(key), size=size, eTag=etag.strip('"'), sequencer=f"{time.time_ns():X}")
    if version_id:
        obj["versionId"] = version_id
    else:
        obj.pop("versionId", None)
    return event


def schedule_event() -> dict:
    """events/schedule.json, as EventBridge sends it now."""
    event = load_event("schedule.json")
    event["id"] = str(uuid.uuid4())
    event["time"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return event


def sqs_event(messages: list[dict], queue_arn: str, region: str) -> dict:
    """events/sqs-ready.json carrying messages as `ReceiveMessage` returned them."""
    template = load_event("sqs-ready.json")["Records"][0]
    records = []
    for message in messages:
        record = copy.deepcopy(template)
        record.update(
            messageId=message["MessageId"],
            receiptHandle=message["ReceiptHandle"],
            body=message["Body"],
            attributes=message.get("Attributes", {}),
            messageAttributes=message.get("MessageAttributes", {}),
            md5OfBody=message["MD5OfBody"],
            eventSourceARN=queue_arn,
            awsRegion=region,
        )
        records.append(record)
    return {"Records": records}


def queue_arn(sqs: Any, queue_url: str) -> str:
    return sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]


# ------------------------------------------------------------------ job files


def example_spec(provider: str) -> dict:
    """events/pipelines/invoices.json with `provider`'s model."""
    spec = json.loads((EVENTS / "pipelines" / "invoices.json").read_text())
    spec["model"] = MODELS[provider]
    return spec


def example_requests() -> bytes:
    return (EVENTS / "jobs" / "invoices.jsonl").read_bytes()


DEMO_VENDORS = ["Acme Tools GmbH", "Northwind Traders", "Contoso Ltd", "Fabrikam Inc.", "Litware Inc",
                "Tailspin Toys", "Coho Winery", "Proseware", "Alpine Ski House", "Woodgrove Bank"]
DEMO_CURRENCIES = ["EUR", "USD", "GBP", "CHF", "CAD", "SEK"]


def demo_spec(provider: str) -> dict:
    """The demo pipeline's spec: the example spec over CSV columns, kept `cost_center`,
    Parquet results, five rows per request, the guidelines, skipping rows done before."""
    spec = example_spec(provider)
    spec |= {
        "id_column": "invoice_id",
        "template": "From: {received_from}\n\n{body}",
        "keep": ["cost_center"],
        "formats": ["jsonl", "parquet"],
        "skip_succeeded": True,
        "rows_per_request": 5,
        "max_tokens": 2048,
        "system_prompt": (EVENTS / "jobs" / "invoice-guidelines.txt").read_text().strip(),
    }
    return spec


def demo_invoice(n: int) -> tuple[str, str]:
    """Invoice number `n` as (id, body): one of the example file's 20 lines, else a
    generated one. The example file's broken line becomes a row with an empty body and
    its line without `custom_id` a row with an empty id: both are `invalid_input` errors."""
    if n <= 20:
        try:
            line = json.loads(example_requests().splitlines()[n - 1])
        except json.JSONDecodeError:
            return f"inv-{n:03d}", ""
        return line.get("custom_id", ""), line.get("text") or line["messages"][-1]["content"]
    vendor = DEMO_VENDORS[n % len(DEMO_VENDORS)]
    currency = DEMO_CURRENCIES[n % len(DEMO_CURRENCIES)]
    amount = f"{(n * 37.25) % 5000 + 12:,.2f}"
    # Every fifth body spans two lines, as pasted e-mail bodies do (quoted in the CSV).
    joint = "\n" if n % 5 == 0 else ", "
    text = f"{vendor} invoice D-{4000 + n} dated 2024-04-{n % 28 + 1:02d}{joint}total {currency} {amount}"
    return f"inv-{n:03d}", text


def demo_csv(invoices: range) -> bytes:
    """The CSV export of `invoices`, as a spreadsheet writes it (header, CRLF, quoting)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["invoice_id", "received_from", "body", "cost_center"])
    for n in invoices:
        sender = DEMO_VENDORS[n % len(DEMO_VENDORS)].split()[0].lower().strip(".")
        invoice_id, body = demo_invoice(n)
        writer.writerow([invoice_id, f"billing@{sender}.example", body, f"CC-{n % 7 + 1:02d}"])
    return out.getvalue().encode()


def request_lines(body: bytes) -> list[tuple[int, bytes]]:
    """(1-based line number, line) of every request line of an upload (header skipped)."""
    lines = body.split(b"\n")
    numbered = [(n, line) for n, line in enumerate(lines, start=1) if line.strip()]
    if numbered and b'"spec"' in numbered[0][1]:
        numbered = numbered[1:]
    return numbered


def expected_custom_id(number: int, line: bytes) -> str:
    """The id a request line's result is filed under: its `custom_id`, or `line-N`."""
    try:
        parsed = json.loads(line)
    except json.JSONDecodeError:
        return f"line-{number}"
    custom_id = parsed.get("custom_id") if isinstance(parsed, dict) else None
    return custom_id if isinstance(custom_id, str) else f"line-{number}"


# ------------------------------------------------------------------ the local pipeline


@dataclass
class JobResults:
    summary: dict
    successes: list[dict]
    errors: list[dict]
    # Result object key -> its lines, to check that no id appears in two files.
    files: dict[str, list[dict]]


class LocalPipeline:
    """moto + provider emulator + `cargo lambda watch`, and the AWS resources of
    infra/template.yaml inside moto. Use as a context manager: leaving it stops all."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.processes = Processes()
        self.env = read_env_file(LOCAL_ENV_FILE)
        self.bucket = self.env["BUCKET_NAME"]
        self.region = self.env["AWS_REGION"]
        self.api_key = EMULATOR_API_KEY
        self.moto_url = ""
        self.emulator_url = ""
        self.invoke_port = 0
        self.queue_url = ""
        self.queue_arn = ""
        self.dlq_url = ""
        self.invocations = 0

    def __enter__(self) -> LocalPipeline:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- lifecycle

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = tool_env()
        moto_port, emulator_port, self.invoke_port = free_port(), free_port(), free_port()
        self.moto_url = f"http://127.0.0.1:{moto_port}"
        self.emulator_url = f"http://127.0.0.1:{emulator_port}"

        self.processes.start(
            "moto_server",
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
            env,
            self.run_dir / "moto.log",
        )
        self.processes.start(
            "provider-emulator",
            [
                str(target_dir() / "debug" / "provider-emulator"),
                "--port", str(emulator_port),
                "--step-ms", str(EMULATOR_STEP_MS),
                "--api-key", self.api_key,
                # Bedrock reads its jobs' input from, and writes their output to, moto.
                "--s3-endpoint", self.moto_url,
                "--bedrock-min-records", str(DEMO_BEDROCK_MIN_RECORDS),
            ],
            env,
            self.run_dir / "emulator.log",
        )
        wait_for_http(self.moto_url + "/moto-api/", "moto_server", 30, self.processes)
        wait_for_http(self.emulator_url + "/", "provider-emulator", 30, self.processes)
        self.create_resources()

        self.env |= self.store_keys()
        self.env |= {
            "AWS_ENDPOINT_URL": self.moto_url,
            "READY_QUEUE_URL": self.queue_url,
            "LEDGER_TABLE": LEDGER_TABLE,
            "OPENAI_BASE_URL": self.emulator_url,
            "ANTHROPIC_BASE_URL": self.emulator_url,
            "GEMINI_BASE_URL": self.emulator_url,
            "VERTEX_BASE_URL": self.emulator_url,
            "GCS_BASE_URL": self.emulator_url,
            "BEDROCK_ENDPOINT_URL": self.emulator_url,
            "BEDROCK_ROLE_ARN": DEMO_BEDROCK_ROLE_ARN,
            "BEDROCK_BUCKET": self.bucket,
            "BEDROCK_MIN_RECORDS": str(DEMO_BEDROCK_MIN_RECORDS),
        }
        env_file = self.run_dir / "lambda.env"
        write_env_file(env_file, self.env)
        self.processes.start(
            "cargo lambda watch",
            [
                "cargo", "lambda", "watch",
                "--invoke-address", "127.0.0.1",
                "--invoke-port", str(self.invoke_port),
                "--env-file", str(env_file),
                # Other developers edit the tree: never rebuild in the middle of a run.
                "--ignore-changes",
                "--timeout", "600",
            ],
            env,
            self.run_dir / "cargo-lambda-watch.log",
        )
        wait_for_http(f"http://127.0.0.1:{self.invoke_port}/", "cargo lambda watch", 60, self.processes)

    def stop(self) -> None:
        self.processes.stop_all()

    # -- AWS clients and resources

    def client(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            service,
            endpoint_url=self.moto_url,
            region_name=self.region,
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )

    def create_resources(self) -> None:
        """The bucket, queues and ledger table as infra/template.yaml declares them."""
        s3, sqs = self.client("s3"), self.client("sqs")
        self.client("dynamodb").create_table(
            TableName=LEDGER_TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "row", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "row", "KeyType": "HASH"}],
            SSESpecification={"Enabled": True},
        )
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        dlq = sqs.create_queue(
            QueueName="batchline-ready-dlq",
            Attributes={"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"},
        )
        self.dlq_url = dlq["QueueUrl"]
        dlq_arn = queue_arn(sqs, self.dlq_url)
        ready = sqs.create_queue(
            QueueName="batchline-ready",
            Attributes={
                "VisibilityTimeout": "5400",
                "MessageRetentionPeriod": "345600",
                "SqsManagedSseEnabled": "true",
                "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}),
            },
        )
        self.queue_url = ready["QueueUrl"]
        self.queue_arn = queue_arn(sqs, self.queue_url)

    def store_keys(self) -> dict[str, str]:
        """The API keys where the deployed stack keeps them (Secrets Manager; SSM for
        Anthropic, the other route the functions support); the variables naming them."""
        secrets, ssm = self.client("secretsmanager"), self.client("ssm")

        def secret(name: str, value: str) -> str:
            return secrets.create_secret(Name=f"batchline/{name}", SecretString=value)["ARN"]

        ssm.put_parameter(Name="/batchline/anthropic-api-key", Value=self.api_key, Type="SecureString")
        return {
            "OPENAI_API_KEY_SECRET_ARN": secret("openai-api-key", self.api_key),
            "GEMINI_API_KEY_SECRET_ARN": secret("gemini-api-key", self.api_key),
            "ANTHROPIC_API_KEY_PARAMETER": "/batchline/anthropic-api-key",
            "GOOGLE_CREDENTIALS_SECRET_ARN": secret(
                "google-credentials", service_account_json(self.emulator_url + "/token")
            ),
        }

    # -- functions

    def invoke(self, function: str, event: dict) -> Any:
        """`cargo lambda invoke <function> --data-file <event>`; the function's answer."""
        self.invocations += 1
        event_file = self.run_dir / f"event-{self.invocations:03d}-{function}.json"
        event_file.write_text(json.dumps(event, indent=2))
        argv = [
            "cargo", "lambda", "invoke", function,
            "--invoke-address", "127.0.0.1",
            "--invoke-port", str(self.invoke_port),
            "--data-file", str(event_file),
            "--output-format", "json",
        ]
        done = subprocess.run(argv, cwd=ROOT, env=tool_env(), capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise DemoError(
                f"{function} failed (event {event_file.name}): {done.stderr.strip() or done.stdout.strip()}"
            )
        return json.loads(done.stdout)

    def upload(self, key: str, body: bytes) -> dict:
        """Puts `body` under `key`; the S3 put event for it."""
        put = self.client("s3").put_object(Bucket=self.bucket, Key=key, Body=body)
        return s3_put_event(self.bucket, key, put.get("VersionId"), len(body), put["ETag"])

    def put_pipeline_spec(self, name: str, spec: dict) -> None:
        body = json.dumps(spec).encode()
        self.client("s3").put_object(Bucket=self.bucket, Key=f"pipelines/{name}.json", Body=body)

    def submit(self, event: dict) -> list[dict]:
        return self.invoke("submit", event)

    def poll(self) -> dict:
        return self.invoke("poll", schedule_event())

    def collect_ready(self) -> tuple[int, int]:
        """Receives what the ready queue holds and hands it to `collect` as Lambda's SQS
        event source would: succeeded messages are deleted, failed ones come back (here
        after 2 s instead of the queue's visibility timeout, to keep the run short).
        Returns (messages handed over, messages that failed)."""
        sqs = self.client("sqs")
        received = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            return 0, 0
        response = self.invoke("collect", sqs_event(received, self.queue_arn, self.region))
        failed = {item["itemIdentifier"] for item in (response or {}).get("batchItemFailures", [])}
        for message in received:
            if message["MessageId"] in failed:
                sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=2
                )
            else:
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        return len(received), len(failed)

    def dead_letters(self) -> int:
        """Messages collect gave up on (moved to the ready queue's DLQ)."""
        attributes = self.client("sqs").get_queue_attributes(
            QueueUrl=self.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    def advance_batches(self) -> None:
        """The emulator's control endpoint: every batch goes to its end now."""
        request = urllib.request.Request(
            self.emulator_url + "/_emulator/advance",
            data=b"{}",
            headers={"content-type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=10).close()

    def openai_batches(self) -> list[dict]:
        """Every batch the emulator's OpenAI API holds (`GET /v1/batches`)."""
        batches: list[dict] = []
        after = None
        while True:
            url = self.emulator_url + "/v1/batches?limit=100" + (f"&after={after}" if after else "")
            request = urllib.request.Request(url, headers={"authorization": f"Bearer {self.api_key}"})
            with urllib.request.urlopen(request, timeout=10) as answer:
                page = json.load(answer)
            batches += page["data"]
            if not page.get("has_more"):
                return batches
            after = page["last_id"]

    # -- bucket contents

    def get_json(self, key: str) -> dict | None:
        s3 = self.client("s3")
        try:
            return json.loads(s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    def keys(self, prefix: str) -> list[str]:
        pages = self.client("s3").get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read_jsonl(self, key: str) -> list[dict]:
        body = self.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def results(self, job_id: str) -> JobResults:
        summary = self.get_json(f"results/{job_id}/summary.json")
        if summary is None:
            raise DemoError(f"results/{job_id}/summary.json does not exist")
        result_keys = [key for key in self.keys(f"results/{job_id}/") if key.endswith(".jsonl")]
        files = {key: self.read_jsonl(key) for key in result_keys}
        successes = [line for key, lines in files.items() if "/successes/" in key for line in lines]
        errors = [line for key, lines in files.items() if "/errors/" in key for line in lines]
        return JobResults(summary=summary, successes=successes, errors=errors, files=files)

    # -- the flow

    def run_to_completion(
        self,
        job_id: str,
        timeout: float = 120,
        progress: Callable[[str], None] = log,
    ) -> dict:
        """Polls and collects until the job's summary exists; returns the summary.
        After the first poll the emulator is told to end every batch."""
        deadline = time.monotonic() + timeout
        summary_key = f"results/{job_id}/summary.json"
        advanced = False
        tick = 0
        while True:
            tick += 1
            report = self.poll()
            record = self.get_json(f"jobs/{job_id}/job.json") or {}
            parts = record.get("parts", [])
            states = ", ".join(f"part {p['index']}: {p.get('raw_status', '?')}" for p in parts)
            progress(
                f"poll #{tick}: {report.get('open_jobs')} open job(s), "
                f"{report.get('parts_checked')} part(s) checked, {report.get('parts_queued')} queued; "
                f"job {record.get('status', '?')} ({states})"
            )
            if report.get("failed_jobs"):
                progress(f"poll could not check {report['failed_jobs']} (retried on the next tick)")
            if not advanced:
                self.advance_batches()
                advanced = True
                progress("told the emulator to end every batch (POST /_emulator/advance)")
            while True:
                handed, failed = self.collect_ready()
                if not handed:
                    break
                progress(f"collect: {handed} message(s), {failed} failed")
            summary = self.get_json(summary_key)
            if summary is not None:
                return summary
            self.processes.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(
                    f"job {job_id} did not finish within {timeout:.0f}s; last record: {json.dumps(record)}"
                )
            time.sleep(1)


def job_id_of(outcomes: list[dict]) -> str:
    """The job the submit invocation made (or found)."""
    for outcome in outcomes:
        if "job_id" in outcome:
            return outcome["job_id"]
    raise DemoError(f"submit made no job: {outcomes}")


# ------------------------------------------------------------------ the demo


@contextmanager
def timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        timings[phase] = time.monotonic() - started


def print_results(results: JobResults, shown: int) -> None:
    summary = results.summary
    brief = {k: v for k, v in summary.items() if k not in ("source", "parts", "files")}
    print("\n== summary.json (abridged; source, parts and files left out)")
    print(json.dumps(brief, indent=2))
    print(f"\n== first {min(shown, len(results.successes))} of {len(results.successes)} successes")
    for line in results.successes[:shown]:
        print(json.dumps({k: line[k] for k in ("custom_id", "result", "cost_center") if k in line}))
    print(f"\n== first {min(shown, len(results.errors))} of {len(results.errors)} errors")
    for line in results.errors[:shown]:
        fields = ("custom_id", "error_type", "error_message", "line", "attempts")
        print(json.dumps({k: line[k] for k in fields if line.get(k) is not None}))


def print_parquet(pipeline: LocalPipeline, job_id: str, shown: int) -> None:
    """The job's Parquet successes read back with pyarrow, as a user would."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    s3 = pipeline.client("s3")
    keys = [key for key in pipeline.keys(f"results/{job_id}/successes/") if key.endswith(".parquet")]
    if not keys:
        print("\n== no Parquet successes")
        return
    tables = [pq.read_table(pa.BufferReader(s3.get_object(Bucket=pipeline.bucket, Key=key)["Body"].read())) for key in keys]
    table = pa.concat_tables(tables)
    print(f"\n== Parquet: {len(keys)} file(s), {table.num_rows} rows; columns:")
    for column in table.schema:
        print(f"   {column.name}: {column.type}")
    print(f"== first {min(shown, table.num_rows)} rows")
    for row in table.slice(0, shown).to_pylist():
        print(json.dumps(row, default=str))


def run_demo(provider: str, build: bool, keep: bool) -> None:
    timings: dict[str, float] = {}
    started = time.monotonic()
    if build:
        timings["build"] = build_binaries()
    RUNS_DIR.mkdir(exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=RUNS_DIR))
    log(f"run directory (logs, env file, events): {run_dir.relative_to(ROOT)}")
    pipeline = LocalPipeline(run_dir)
    try:
        with timed(timings, "start services"):
            pipeline.start()
        log(
            f"moto {pipeline.moto_url}, emulator {pipeline.emulator_url}, "
            f"cargo lambda watch on 127.0.0.1:{pipeline.invoke_port}"
        )
        pipeline.put_pipeline_spec(DEMO_PIPELINE, demo_spec(provider))
        log(f"pipelines/{DEMO_PIPELINE}.json: model {MODELS[provider]}, CSV columns through a template")
        for key, invoices in DEMO_UPLOADS:
            event = pipeline.upload(key, demo_csv(invoices))
            log(f"uploaded s3://{pipeline.bucket}/{key} ({len(invoices)} rows)")
            month = key.split("/")[-1].split()[0]
            with timed(timings, f"submit ({month})"):
                outcomes = pipeline.submit(event)
            log(f"submit: {json.dumps(outcomes)}")
            job_id = job_id_of(outcomes)
            with timed(timings, f"poll + collect ({month})"):
                pipeline.run_to_completion(job_id)
            print(f"\n######## {key}")
            print_results(pipeline.results(job_id), shown=3)
            print_parquet(pipeline, job_id, shown=3)
            print(f"\nresults: s3://{pipeline.bucket}/results/{job_id}/ (in moto; gone when the demo ends)")
        print(f"\nready-queue DLQ: {pipeline.dead_letters()} message(s)")
    except BaseException:
        log(f"failed; logs are in {run_dir}")
        raise
    finally:
        pipeline.stop()
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    timings["total"] = time.monotonic() - started
    print("\n== timings")
    for phase, seconds in timings.items():
        print(f"{phase:>16}: {seconds:6.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--provider",
        default="openai",
        help="openai, anthropic, google (Vertex AI, also: vertex), gemini or bedrock",
    )
    parser.add_argument("--no-build", action="store_true", help="skip `cargo build` (binaries are current)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory after a successful run")
    args = parser.parse_args(argv)
    provider = PROVIDER_ALIASES.get(args.provider, args.provider)
    if provider not in MODELS:
        parser.error(f"unknown provider {args.provider!r}; one of {', '.join(MODELS)}")
    interrupt_on_signals()
    try:
        run_demo(provider, build=not args.no_build, keep=args.keep)
        return 0
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except (DemoError, subprocess.CalledProcessError) as e:
        log(f"FAILED: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
