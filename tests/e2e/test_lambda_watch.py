"""One OpenAI job end to end through the real Lambda binaries under `cargo lambda watch`,
with moto for S3/SQS and the provider emulator, driven by tests/scripts/demo.py.

The job uses the named-pipeline route (pipelines/invoices.json, upload under
inbox/invoices/) with a key that needs URL-encoding in the S3 event; `make demo` covers
the header route. Checked on the objects in the bucket: the invariant (every request line
exactly once across the successes and errors files), the summary's counts, the rejected
input line, that a repeated S3 event creates no second provider batch, and that the key
came from Secrets Manager. The functions' output under `cargo lambda watch` is read too:
their metrics, one EMF document a line among the JSON log lines.
"""

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import demo  # noqa: E402
import emf  # noqa: E402

PIPELINE = "invoices"
# `+`, a space and non-ASCII: the event carries it URL-encoded, submit must decode it.
UPLOAD_KEY = f"inbox/{PIPELINE}/March batch+été.jsonl"
# Line 16 of events/jobs/invoices.jsonl is cut short: not JSON, so it is filed as line-16.
BAD_LINE = 16
SCHEMA_BREAK_ID = "inv-012"


@dataclass
class FinishedJob:
    job_id: str
    body: bytes
    spec: dict
    results: demo.JobResults
    first_submit: list[dict]
    repeated_submits: list[list[dict]]
    # OpenAI batches in the emulator after the first submit and after each repeat.
    batches_after_first: int
    batches_after_repeats: list[int]
    record: dict
    dead_letters: int
    # The functions' environment as passed to `cargo lambda watch`.
    lambda_env: str
    # What the functions printed (stdout and stderr) under `cargo lambda watch`.
    lambda_log: str


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> FinishedJob:
    demo.build_binaries()
    with demo.LocalPipeline(tmp_path_factory.mktemp("lambda-watch")) as pipeline:
        spec = demo.example_spec("openai")
        pipeline.put_pipeline_spec(PIPELINE, spec)
        body = demo.example_requests()
        event = pipeline.upload(UPLOAD_KEY, body)

        first = pipeline.submit(event)
        job_id = demo.job_id_of(first)
        batches_after_first = len(pipeline.openai_batches())
        repeated = [pipeline.submit(event)]
        batches_after_repeats = [len(pipeline.openai_batches())]

        pipeline.run_to_completion(job_id, timeout=180)
        # The same event once more, after the job has closed.
        repeated.append(pipeline.submit(event))
        batches_after_repeats.append(len(pipeline.openai_batches()))
        return FinishedJob(
            job_id=job_id,
            body=body,
            spec=spec,
            results=pipeline.results(job_id),
            first_submit=first,
            repeated_submits=repeated,
            batches_after_first=batches_after_first,
            batches_after_repeats=batches_after_repeats,
            record=pipeline.get_json(f"jobs/{job_id}/job.json") or {},
            dead_letters=pipeline.dead_letters(),
            lambda_env=(pipeline.run_dir / "lambda.env").read_text(),
            lambda_log=(pipeline.run_dir / "cargo-lambda-watch.log").read_text(errors="replace"),
        )


def expected_ids(body: bytes) -> Counter:
    return Counter(demo.expected_custom_id(number, line) for number, line in demo.request_lines(body))


def test_every_request_line_appears_exactly_once_across_successes_and_errors(job: FinishedJob) -> None:
    expected = expected_ids(job.body)
    assert len(expected) == 20 and all(n == 1 for n in expected.values()), expected
    found = Counter(line["custom_id"] for lines in job.results.files.values() for line in lines)
    duplicated = {i: n for i, n in found.items() if n > 1}
    assert not duplicated, f"ids in more than one result line: {duplicated}"
    assert found == expected, f"missing {expected - found}, unexpected {found - expected}"
    # Both kinds of file are in play, so the check above spans them.
    kinds = {key.split("/")[2] for key in job.results.files}
    assert kinds == {"successes", "errors"}, sorted(job.results.files)


def test_summary_counts_add_up_to_the_requests(job: FinishedJob) -> None:
    summary = job.results.summary
    assert summary["status"] == "completed", summary
    assert summary["requests"] == sum(expected_ids(job.body).values()) == 20
    assert summary["succeeded"] + summary["failed"] == summary["requests"]
    assert summary["succeeded"] == len(job.results.successes)
    assert summary["failed"] == len(job.results.errors)
    assert summary["invariant_holds"] is True
    assert summary["source"]["key"] == UPLOAD_KEY
    assert job.record["status"] == "completed"
    assert job.dead_letters == 0


def test_the_bad_line_is_an_invalid_input_error_naming_file_and_line(job: FinishedJob) -> None:
    bad_id = demo.expected_custom_id(BAD_LINE, job.body.split(b"\n")[BAD_LINE - 1])
    assert bad_id == f"line-{BAD_LINE}"
    [error] = [e for e in job.results.errors if e["custom_id"] == bad_id]
    assert error["error_type"] == "invalid_input", error
    assert error["line"] == BAD_LINE, error
    assert UPLOAD_KEY in error["error_message"] and f"line {BAD_LINE}" in error["error_message"], error
    assert f"results/{job.job_id}/errors/input.jsonl" in job.results.files


def test_successes_match_the_schema_and_the_broken_answer_is_an_error(job: FinishedJob) -> None:
    assert job.results.successes, "no successes at all"
    for success in job.results.successes:
        jsonschema.validate(success["result"], job.spec["schema"])
    [broken] = [e for e in job.results.errors if e["custom_id"] == SCHEMA_BREAK_ID]
    assert broken["error_type"] == "schema_mismatch", broken
    assert job.results.summary["errors_by_type"] == {"invalid_input": 1, "schema_mismatch": 1}


def test_a_repeated_s3_event_creates_no_second_batch(job: FinishedJob) -> None:
    assert [o["outcome"] for o in job.first_submit] == ["submitted"], job.first_submit
    parts = len(job.record["parts"])
    assert parts >= 1
    assert job.batches_after_first == parts
    for outcome in job.repeated_submits:
        assert outcome == [{"outcome": "duplicate", "job_id": job.job_id}], outcome
    assert job.batches_after_repeats == [parts, parts]


def test_the_functions_read_the_key_from_secrets_manager(job: FinishedJob) -> None:
    # The emulator accepts only this key and the job ran, yet the functions were never
    # given it: they read it through OPENAI_API_KEY_SECRET_ARN, as when deployed.
    assert demo.EMULATOR_API_KEY not in job.lambda_env
    assert "OPENAI_API_KEY_SECRET_ARN=arn:aws:secretsmanager:" in job.lambda_env
    assert job.results.successes


def test_the_functions_print_their_metrics_as_emf_lines(job: FinishedJob) -> None:
    declared = emf.declared_metrics()
    namespace = emf.declared_str("NAMESPACE")
    documents = emf.documents(job.lambda_log)
    assert documents, "no EMF line in the functions' output"
    assert emf.broken_lines(job.lambda_log) == [], "a log line and a metrics line interleaved"
    for document in documents:
        assert emf.problems(document, declared, namespace) == [], document

    def total(metric: str, **dimensions: str) -> float:
        return sum(
            d[metric]
            for d in documents
            if metric in d and all(d.get(name) == value for name, value in dimensions.items())
        )

    job_dims = {"Pipeline": PIPELINE, "Provider": "openai"}
    summary = job.results.summary
    # The repeated S3 events were duplicates: one job, submitted and closed once.
    assert total("JobsSubmitted", **job_dims) == 1
    assert total("JobsCompleted", **job_dims) == 1
    assert total("JobsFailed") == 0
    assert total("RowsSucceeded", **job_dims) == summary["succeeded"]
    for error_type, rows in summary["errors_by_type"].items():
        assert total("RowsFailed", **job_dims, ErrorType=error_type) == rows, error_type
    assert total("RowsFailed") == summary["failed"]
    assert total("InputTokens", **job_dims) == summary["usage"]["input_tokens"] > 0
    assert total("OutputTokens", **job_dims) == summary["usage"]["output_tokens"] > 0
    latencies = [d["ResultsLatency"] for d in documents if "ResultsLatency" in d]
    assert len(latencies) == len(job.record["parts"]), "one per collected part"
    assert all(0 <= seconds < 600 for seconds in latencies), latencies
    assert any("PartsWaitingForQuota" in d for d in documents), "poll reports its waiting parts"

    # Each document's own dimensions, and the empty set that the alarms watch.
    for document in documents:
        directive = document["_aws"]["CloudWatchMetrics"][0]
        names = {metric["Name"] for metric in directive["Metrics"]}
        if names == {"PartsWaitingForQuota"}:
            expected = [[]]
        elif names == {"RowsFailed"}:
            expected = [["Pipeline", "Provider", "ErrorType"], []]
        else:
            expected = [["Pipeline", "Provider"], []]
        assert directive["Dimensions"] == expected, document
