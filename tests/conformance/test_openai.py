"""The emulator's OpenAI Files and Batch API, driven by the official openai SDK."""

import json
from typing import Optional

import openai
import pydantic
import pytest
from openai.types import Batch, Completion, CreateEmbeddingResponse, FileObject
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from conftest import advance, conforms, set_faults, wait_for

MODEL = "gpt-4o-mini"
SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "integer", "minimum": 0},
    },
    "required": ["vendor", "total"],
    "additionalProperties": False,
}


class OutputLineError(pydantic.BaseModel):
    code: str
    message: str


class OutputLineResponse(pydantic.BaseModel):
    status_code: int
    request_id: str
    body: dict


class OutputLine(pydantic.BaseModel):
    """One line of an output or error file (the SDK has no type for it)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    id: str
    custom_id: str
    response: Optional[OutputLineResponse]
    error: Optional[OutputLineError]


class ApiErrorBody(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


@pytest.fixture
def client(emulator):
    return openai.OpenAI(base_url=f"{emulator}/v1", api_key="test-key", max_retries=0)


def request_line(custom_id, text, model=MODEL):
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [
                {"role": "developer", "content": "Extract the invoice."},
                {"role": "user", "content": text},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "invoice", "strict": True, "schema": SCHEMA},
            },
        },
    }


def upload(client, lines):
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("requests.jsonl", content), purpose="batch")
    conforms(FileObject, uploaded.model_dump())
    assert uploaded.purpose == "batch" and uploaded.bytes == len(content)
    assert client.files.retrieve(uploaded.id).filename == "requests.jsonl"
    assert client.files.content(uploaded.id).content == content
    return uploaded


def create(client, file_id, endpoint="/v1/chat/completions", **extra):
    return client.batches.create(
        input_file_id=file_id,
        endpoint=endpoint,
        completion_window="24h",
        **extra,
    )


def retrieve_checked(client, batch_id):
    """The batch, checked against the SDK type with every field on the wire."""
    raw = client.batches.with_raw_response.retrieve(batch_id).http_response.json()
    assert set(raw) == set(Batch.model_fields), "the batch object must carry every field"
    return conforms(Batch, raw)


def results(client, file_id):
    """The lines of an output or error file, by custom_id."""
    if file_id is None:
        return {}
    text = client.files.content(file_id).text
    lines = [OutputLine.model_validate_json(line) for line in text.splitlines() if line]
    by_id = {line.custom_id: line for line in lines}
    assert len(by_id) == len(lines), "each custom_id appears once"
    return by_id


def finish(client, emulator, batch_id):
    advance(emulator, batch_id)
    return retrieve_checked(client, batch_id)


def test_round_trip_with_faults(client, emulator):
    lines = [request_line(f"req-{i}", f"Invoice {i} from ACME, total {i}") for i in range(5)]
    lines.append(request_line("refused", "[[fault:refusal]]"))
    lines.append(request_line("too-long", "[[fault:provider_error]]"))
    lines.append(request_line("cut", "[[fault:truncate]]"))
    uploaded = upload(client, lines)

    batch = create(client, uploaded.id, metadata={"job": "conformance"})
    assert batch.status == "validating"
    assert batch.metadata == {"job": "conformance"}
    running = wait_for(lambda: retrieve_checked(client, batch.id), lambda b: b.status != "validating")
    assert running.status in ("in_progress", "finalizing", "completed")
    assert running.in_progress_at is not None

    done = finish(client, emulator, batch.id)
    assert done.status == "completed"
    assert done.completed_at is not None and done.model == MODEL
    assert done.request_counts.total == 8
    assert (done.request_counts.completed, done.request_counts.failed) == (7, 1)
    assert done.usage.total_tokens == done.usage.input_tokens + done.usage.output_tokens

    output = results(client, done.output_file_id)
    errors = results(client, done.error_file_id)
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    for custom_id, line in output.items():
        assert line.error is None and line.response.status_code == 200
        completion = conforms(ChatCompletion, line.response.body)
        choice = completion.choices[0]
        if custom_id == "refused":
            assert choice.message.content is None and choice.message.refusal
        elif custom_id == "cut":
            assert choice.finish_reason == "length"
            with pytest.raises(json.JSONDecodeError):
                json.loads(choice.message.content)
        else:
            answer = json.loads(choice.message.content)
            assert isinstance(answer["vendor"], str) and answer["total"] >= 0
    failed = errors["too-long"]
    assert failed.response.status_code == 400 and failed.error is None
    error = ApiErrorBody.model_validate(failed.response.body["error"])
    assert error.code == "context_length_exceeded"


def test_list_auto_paginates_newest_first(client):
    uploaded = upload(client, [request_line("only", "Invoice")])
    created = [create(client, uploaded.id).id for _ in range(25)]
    listed = [batch.id for batch in client.batches.list(limit=10)]
    assert listed == list(reversed(created))
    first_page = client.batches.list()
    assert len(first_page.data) == 20 and first_page.has_more


def test_cancel_keeps_every_request_accounted_for(client, emulator):
    lines = [request_line(f"req-{i}", f"Invoice {i}") for i in range(6)]
    batch = create(client, upload(client, lines).id)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = finish(client, emulator, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    output = results(client, done.output_file_id)
    errors = results(client, done.error_file_id)
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    for line in errors.values():
        assert line.response is None and line.error.code == "batch_cancelled"


def test_expired_batch_reports_what_never_ran(client, emulator):
    set_faults(emulator, {"batch_fate": "expire", "partial": 0.5})
    lines = [request_line(f"req-{i}", f"Invoice {i}") for i in range(4)]
    done = finish(client, emulator, create(client, upload(client, lines).id).id)
    assert done.status == "expired" and done.expired_at is not None
    assert len(results(client, done.output_file_id)) == 2
    expired = results(client, done.error_file_id)
    assert len(expired) == 2
    assert all(line.response is None and line.error.code == "batch_expired" for line in expired.values())


def test_invalid_file_fails_the_batch(client, emulator):
    lines = [request_line("same", "a"), request_line("same", "b"), request_line("x", "c", model="gpt-4o")]
    done = finish(client, emulator, create(client, upload(client, lines).id).id)
    assert done.status == "failed" and done.failed_at is not None
    assert [(e.code, e.line) for e in done.errors.data] == [("duplicate_custom_id", 2), ("model_mismatch", 3)]
    assert done.output_file_id is None and done.error_file_id is None


def test_bad_requests_raise_typed_errors(client, emulator):
    uploaded = upload(client, [request_line("a", "Invoice")])
    with pytest.raises(openai.BadRequestError) as bad_window:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="48h"
        )
    assert bad_window.value.param == "completion_window"
    with pytest.raises(openai.BadRequestError):
        create(client, uploaded.id, metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError):
        create(client, "file-does-not-exist")
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("requests.txt", b"{}\n"), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_does_not_exist")
    wrong_key = openai.OpenAI(base_url=f"{emulator}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        wrong_key.batches.list()
    assert refused.value.code == "invalid_api_key"


def line_at(custom_id, endpoint, body):
    return {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body}


def run_batch(client, emulator, endpoint, lines):
    """Uploads `lines`, runs a batch for `endpoint` to its end; answers it with its
    output and error lines."""
    done = finish(client, emulator, create(client, upload(client, lines).id, endpoint).id)
    assert done.endpoint == endpoint
    return done, results(client, done.output_file_id), results(client, done.error_file_id)


def test_unknown_model_fails_every_line_with_model_not_found(client, emulator):
    lines = [request_line(f"req-{i}", "Invoice", model="gpt-3") for i in range(3)]
    done, output, errors = run_batch(client, emulator, "/v1/chat/completions", lines)
    assert done.status == "completed" and done.output_file_id is None
    assert (done.request_counts.completed, done.request_counts.failed) == (0, 3)
    assert not output and len(errors) == 3
    for line in errors.values():
        assert line.response.status_code == 404 and line.error is None
        error = ApiErrorBody.model_validate(line.response.body["error"])
        assert error.code == "model_not_found" and error.type == "invalid_request_error"
        assert error.message == "The model `gpt-3` does not exist or you do not have access to it."


def test_responses_batch_answers_response_objects(client, emulator):
    text_format = {"type": "json_schema", "name": "invoice", "strict": True, "schema": SCHEMA}
    lines = [
        line_at("r", "/v1/responses", {"model": MODEL, "instructions": "Extract the invoice.",
                                       "input": "Invoice from ACME, total 12", "text": {"format": text_format}}),
        line_at("no-input", "/v1/responses", {"model": MODEL}),
    ]
    done, output, errors = run_batch(client, emulator, "/v1/responses", lines)
    response = conforms(Response, output["r"].response.body)
    answer = json.loads(response.output_text)
    assert isinstance(answer["vendor"], str) and answer["total"] >= 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    error = ApiErrorBody.model_validate(errors["no-input"].response.body["error"])
    assert (error.code, error.param) == ("missing_required_parameter", "input")


def test_embeddings_batch_answers_vectors(client, emulator):
    lines = [
        line_at("e", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["cat", "dog"], "dimensions": 64}),
        line_at("empty", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ""}),
    ]
    done, output, errors = run_batch(client, emulator, "/v1/embeddings", lines)
    embeddings = conforms(CreateEmbeddingResponse, output["e"].response.body)
    assert [len(e.embedding) for e in embeddings.data] == [64, 64]
    assert all(isinstance(x, float) for x in embeddings.data[0].embedding)
    assert embeddings.usage.prompt_tokens > 0
    assert errors["empty"].response.status_code == 400


def test_completions_batch_answers_text_completions(client, emulator):
    lines = [
        line_at("c", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hello"}),
        line_at("list-prompt", "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": ["a", "b"]}),
    ]
    done, output, _ = run_batch(client, emulator, "/v1/completions", lines)
    assert set(output) == {"c", "list-prompt"}
    completion = conforms(Completion, output["c"].response.body)
    assert completion.choices[0].text and completion.usage.completion_tokens <= 16
    wrong = [line_at("x", "/v1/completions", {"model": MODEL, "prompt": "hi"})]
    _, _, errors = run_batch(client, emulator, "/v1/completions", wrong)
    assert errors["x"].response.status_code == 404
    assert "v1/chat/completions" in errors["x"].response.body["error"]["message"]


def test_endpoints_the_api_does_not_take_are_refused(client):
    uploaded = upload(client, [request_line("a", "Invoice")])
    with pytest.raises(openai.BadRequestError) as refused:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat", completion_window="24h")
    assert refused.value.param == "endpoint"
    assert "Supported values are: '/v1/responses', '/v1/chat/completions'" in refused.value.message


def test_files_list_pages_get_and_delete(client, emulator):
    uploaded = [upload(client, [request_line(f"f{i}", "Invoice")]) for i in range(5)]
    listed = [f.id for f in client.files.list(purpose="batch", limit=2)]
    assert listed == [f.id for f in reversed(uploaded)], "every page, newest first"
    first = client.files.list(purpose="batch", limit=2, order="asc")
    assert [f.id for f in first.data] == [uploaded[0].id, uploaded[1].id] and first.has_more
    for page_item in first.data:
        conforms(FileObject, page_item.model_dump())
    assert client.files.retrieve(uploaded[2].id).id == uploaded[2].id
    deleted = client.files.delete(uploaded[2].id)
    assert deleted.deleted and deleted.id == uploaded[2].id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded[2].id)
    assert uploaded[2].id not in [f.id for f in client.files.list()]


def test_every_answer_carries_a_request_id(client, emulator):
    ok = client.batches.with_raw_response.list()
    assert ok.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.NotFoundError) as missing:
        client.batches.retrieve("batch_nope")
    assert missing.value.request_id and missing.value.request_id.startswith("req_")
