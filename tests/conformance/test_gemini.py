"""The emulator's Gemini Developer API batch mode, driven by the official google-genai SDK
with its defaults (API version v1: the emulator tells its /v1/files and /v1/batches
calls from OpenAI's by the Google API key they carry).
"""

import json

import pytest
from google import genai
from google.genai import errors, types

from conftest import advance, conforms

SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "integer", "minimum": 0},
    },
    "required": ["vendor", "total"],
}
JSON_CONFIG = {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}


@pytest.fixture
def client(emulator):
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(base_url=emulator),
    )


def extraction(text):
    return {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": JSON_CONFIG,
    }


def assert_fits_schema(answer_text):
    answer = json.loads(answer_text)
    assert isinstance(answer["vendor"], str)
    assert isinstance(answer["total"], int) and answer["total"] >= 0


def upload_requests(client, tmp_path, lines):
    path = tmp_path / "requests.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = client.files.upload(
        file=str(path),
        config=types.UploadFileConfig(display_name="requests", mime_type="application/jsonl"),
    )
    assert uploaded.name.startswith("files/")
    assert uploaded.state == types.FileState.ACTIVE
    assert uploaded.source == types.FileSource.UPLOADED
    assert uploaded.size_bytes == path.stat().st_size
    assert client.files.get(name=uploaded.name).display_name == "requests"
    return uploaded


def test_file_batch_round_trip(client, emulator, tmp_path):
    keys = [f"req-{i}" for i in range(3)]
    lines = [{"key": key, "request": extraction(f"invoice {key}")} for key in keys]
    lines.append({"key": "bad", "request": extraction("too long [[fault:provider_error]]")})
    uploaded = upload_requests(client, tmp_path, lines)

    job = client.batches.create(
        model="gemini-2.5-flash",
        src=uploaded.name,
        config=types.CreateBatchJobConfig(display_name="file-batch"),
    )
    assert job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "file-batch"
    assert job.model == "models/gemini-2.5-flash"
    assert client.batches.get(name=job.name).name == job.name

    advance(emulator, job.name)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.end_time is not None
    assert done.dest.file_name.startswith("files/")

    content = client.files.download(file=done.dest.file_name)
    results = {}
    for line in content.decode().splitlines():
        result = json.loads(line)
        assert result["key"] not in results, "every key exactly once"
        results[result["key"]] = result
    assert set(results) == set(keys) | {"bad"}
    for key in keys:
        response = conforms(types.GenerateContentResponse, results[key]["response"])
        assert response.candidates[0].finish_reason == types.FinishReason.STOP
        assert_fits_schema(response.text)
        assert response.usage_metadata.total_token_count > 0
    # A failed line's error is a google.rpc.Status: a google.rpc.Code number, no HTTP
    # status and no status name.
    error = conforms(types.JobError, results["bad"]["error"])
    assert error.code == 3, "INVALID_ARGUMENT"
    assert "response" not in results["bad"]


def test_inline_batch_round_trip(client, emulator):
    requests = [
        types.InlinedRequest(
            contents=f"invoice number {i}",
            metadata={"key": f"inline-{i}"},
            config=types.GenerateContentConfig(
                response_mime_type="application/json", response_json_schema=SCHEMA
            ),
        )
        for i in range(2)
    ]
    job = client.batches.create(
        model="gemini-2.5-flash", src=requests, config={"display_name": "inline-batch"}
    )
    assert job.state == types.JobState.JOB_STATE_PENDING

    advance(emulator, job.name)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    responses = done.dest.inlined_responses
    assert [r.metadata["key"] for r in responses] == ["inline-0", "inline-1"]
    for inlined in responses:
        assert inlined.error is None
        assert_fits_schema(inlined.response.text)


def test_list_cancel_and_delete(client, emulator):
    inline = [{"contents": "hello", "metadata": {"key": "only"}}]
    created = [
        client.batches.create(model="gemini-2.5-flash", src=inline, config={"display_name": f"b{i}"})
        for i in range(3)
    ]
    names = [job.name for job in created]

    listed = [job.name for job in client.batches.list(config={"page_size": 2})]
    assert set(names) <= set(listed)
    assert len(listed) == len(set(listed)), "paging repeats nothing"

    client.batches.cancel(name=names[0])
    assert client.batches.get(name=names[0]).state == types.JobState.JOB_STATE_CANCELLED
    with pytest.raises(errors.ClientError) as refused:
        client.batches.cancel(name=names[0])
    assert refused.value.code == 400

    client.batches.delete(name=names[1])
    with pytest.raises(errors.ClientError) as missing:
        client.batches.get(name=names[1])
    assert missing.value.code == 404


def test_wrong_api_key_is_refused(emulator):
    client = genai.Client(
        api_key="not-the-key",
        http_options=types.HttpOptions(base_url=emulator),
    )
    with pytest.raises(errors.ClientError) as refused:
        client.batches.get(name="batches/anything")
    assert refused.value.status == "INVALID_ARGUMENT"
    assert "API key not valid" in refused.value.message


def test_unknown_model_is_not_found_at_create(client):
    inline = [{"contents": "hello", "metadata": {"key": "only"}}]
    with pytest.raises(errors.ClientError) as missing:
        client.batches.create(model="gemini-2.0-flash", src=inline, config={"display_name": "old"})
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    assert missing.value.message.startswith(
        "models/gemini-2.0-flash is not found for API version v1, or is not supported for batchGenerateContent."
    )
    assert list(client.batches.list()) == [], "nothing was created"


def test_files_are_listed_and_deleted(client, tmp_path):
    uploaded = upload_requests(client, tmp_path, [{"key": "a", "request": extraction("x")}])
    assert uploaded.name in [f.name for f in client.files.list()]
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError):
        client.files.get(name=uploaded.name)
