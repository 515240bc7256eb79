"""The emulator's Vertex AI batch prediction, Cloud Storage and OAuth token endpoint,
driven by the official google-genai SDK (Vertex mode, API version v1beta1) and by
google-auth's service-account credentials.

Input goes to the emulated Cloud Storage with plain HTTP, as the product does.
"""

import json
import urllib.error
import urllib.parse
import urllib.request

import google.oauth2.credentials
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.genai import errors, types
from google.oauth2 import service_account

from conftest import advance, conforms

PROJECT = "test-project"
LOCATION = "us-central1"
BUCKET = "batchline-test"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
SCHEMA = {
    "type": "OBJECT",
    "properties": {"vendor": {"type": "STRING"}, "total": {"type": "INTEGER"}},
    "required": ["vendor", "total"],
}


def storage(emulator, method, path, body=None, token="test-key"):
    """One Cloud Storage JSON API call; answers (status, body bytes)."""
    request = urllib.request.Request(emulator + path, data=body, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        request.add_header("Content-Type", "application/jsonl")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def upload(emulator, name, lines):
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    status, body = storage(emulator, "POST", f"/upload/storage/v1/b/{BUCKET}/o?{query}", data)
    assert status == 200, body
    resource = json.loads(body)
    assert resource["size"] == str(len(data))
    return f"gs://{BUCKET}/{name}"


def read_predictions(emulator, directory):
    bucket, _, prefix = directory.removeprefix("gs://").partition("/")
    query = urllib.parse.urlencode({"prefix": prefix + "/"})
    status, body = storage(emulator, "GET", f"/storage/v1/b/{bucket}/o?{query}")
    assert status == 200, body
    names = [item["name"] for item in json.loads(body)["items"]]
    assert names == [f"{prefix}/predictions.jsonl"]
    object_path = urllib.parse.quote(names[0], safe="")
    status, body = storage(emulator, "GET", f"/storage/v1/b/{bucket}/o/{object_path}?alt=media")
    assert status == 200, body
    return [json.loads(line) for line in body.decode().splitlines()]


def vertex_client(emulator, credentials):
    return genai.Client(
        vertexai=True,
        project=PROJECT,
        location=LOCATION,
        credentials=credentials,
        http_options=types.HttpOptions(base_url=emulator + "/"),
    )


@pytest.fixture
def client(emulator):
    # The emulator takes its API key as a pre-issued token.
    return vertex_client(emulator, google.oauth2.credentials.Credentials(token="test-key"))


def instance(custom_id, text):
    return {
        "request": {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "labels": {"custom_id": custom_id},
            "generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA},
        }
    }


def create_job(client, source, display_name="vertex-batch"):
    return client.batches.create(
        model="gemini-2.5-flash",
        src=source,
        config=types.CreateBatchJobConfig(display_name=display_name, dest=f"gs://{BUCKET}/out"),
    )


def test_batch_job_round_trip(client, emulator):
    ids = [f"req-{i}" for i in range(3)]
    lines = [instance(custom_id, f"invoice {custom_id}") for custom_id in ids]
    lines.append(instance("req-bad", "[[fault:server_error]]"))
    source = upload(emulator, "in/round-trip.jsonl", lines)

    job = create_job(client, source)
    assert job.name.startswith(f"projects/{PROJECT}/locations/{LOCATION}/batchPredictionJobs/")
    assert job.state == types.JobState.JOB_STATE_QUEUED
    assert job.model == "publishers/google/models/gemini-2.5-flash"
    assert job.src.gcs_uri == [source]
    assert job.dest.gcs_uri == f"gs://{BUCKET}/out"
    assert client.batches.get(name=job.name).display_name == "vertex-batch"

    advance(emulator, job.name)
    done = client.batches.get(name=job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert done.completion_stats.successful_count == 3
    assert done.completion_stats.failed_count == 1
    assert done.end_time is not None

    predictions = read_predictions(emulator, done.output_info.gcs_output_directory)
    by_id = {line["request"]["labels"]["custom_id"]: line for line in predictions}
    assert len(by_id) == len(predictions) == 4
    for custom_id in ids:
        line = by_id[custom_id]
        assert line["status"] == ""
        response = conforms(types.GenerateContentResponse, line["response"])
        answer = json.loads(response.text)
        assert isinstance(answer["vendor"], str) and isinstance(answer["total"], int)
    failed = by_id["req-bad"]
    assert failed["status"].startswith("Internal Server Error: ")
    assert "response" not in failed


def test_list_and_cancel(client, emulator):
    source = upload(emulator, "in/list.jsonl", [instance("only", "hello")])
    names = [create_job(client, source, f"job-{i}").name for i in range(3)]

    listed = [job.name for job in client.batches.list(config={"page_size": 1})]
    assert set(names) <= set(listed)
    assert len(listed) == len(set(listed)), "paging repeats nothing"

    client.batches.cancel(name=names[0])
    state = client.batches.get(name=names[0]).state
    assert state in (types.JobState.JOB_STATE_CANCELLING, types.JobState.JOB_STATE_CANCELLED)
    advance(emulator, names[0])
    assert client.batches.get(name=names[0]).state == types.JobState.JOB_STATE_CANCELLED
    with pytest.raises(errors.ClientError) as refused:
        client.batches.cancel(name=names[0])
    assert refused.value.code == 400


def test_service_account_credentials_go_through_the_token_endpoint(emulator):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    credentials = service_account.Credentials.from_service_account_info(
        {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "emulated",
            "private_key": pem,
            "client_email": f"batchline@{PROJECT}.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": emulator + "/token",
        },
        scopes=[CLOUD_PLATFORM],
    )
    client = vertex_client(emulator, credentials)
    source = upload(emulator, "in/service-account.jsonl", [instance("only", "hello")])
    job = create_job(client, source)
    assert credentials.token.startswith("ya29.")
    assert client.batches.get(name=job.name).name == job.name
    # The issued token opens Cloud Storage too.
    status, _ = storage(emulator, "GET", f"/storage/v1/b/{BUCKET}/o", token=credentials.token)
    assert status == 200


def test_unknown_tokens_are_refused(emulator):
    client = vertex_client(emulator, google.oauth2.credentials.Credentials(token="ya29.forged"))
    with pytest.raises(errors.ClientError) as refused:
        client.batches.get(name="7100000000000000000")
    assert refused.value.code == 401
    status, _ = storage(emulator, "GET", f"/storage/v1/b/{BUCKET}/o", token="ya29.forged")
    assert status == 401


def test_unknown_model_fails_the_job_at_create(client, emulator):
    source = upload(emulator, "in/old.jsonl", [instance("only", "hello")])
    with pytest.raises(errors.ClientError) as missing:
        client.batches.create(
            model="gemini-2.0-flash-001",
            src=source,
            config=types.CreateBatchJobConfig(dest=f"gs://{BUCKET}/out"),
        )
    assert missing.value.code == 404 and missing.value.status == "NOT_FOUND"
    assert missing.value.message.startswith(
        f"Publisher Model `projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.0-flash-001`"
        " was not found or your project does not have access to it."
    )
    assert list(client.batches.list()) == [], "nothing was created"
