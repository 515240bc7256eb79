"""The emulator's Amazon Bedrock batch inference control plane, driven by boto3's `bedrock`
client (SigV4, REST-JSON) with input and output in a moto S3."""

import json
import uuid

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from conftest import advance, wait_for

ROLE = "arn:aws:iam::123456789012:role/BedrockBatchInference"
MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
SCHEMA = {
    "type": "object",
    "properties": {"vendor": {"type": "string"}, "total": {"type": "integer"}},
    "required": ["vendor", "total"],
}
ENDED = {"Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired"}


def client(endpoint, service, secret="test", key="test", **config):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}, **config),
    )


def check_declared(value, shape, path):
    """Every field of the raw answer `value` is a member botocore's model declares for `shape`."""
    if shape.type_name == "structure":
        extra = set(value) - set(shape.members)
        assert not extra, f"{path}: fields botocore does not declare: {sorted(extra)}"
        for name, item in value.items():
            check_declared(item, shape.members[name], f"{path}.{name}")
    elif shape.type_name == "list":
        for index, item in enumerate(value):
            check_declared(item, shape.member, f"{path}[{index}]")


@pytest.fixture
def bedrock(bedrock_emulator):
    bedrock = client(bedrock_emulator, "bedrock")

    # botocore keeps only the fields it knows: check the wire answers themselves.
    def strict(http_response, parsed, model, **_):
        if http_response.status_code == 200 and model.output_shape is not None:
            check_declared(json.loads(http_response.content or b"{}"), model.output_shape, model.name)

    bedrock.meta.events.register("after-call.bedrock", strict)
    return bedrock


@pytest.fixture
def s3(moto):
    return client(moto, "s3", s3={"addressing_style": "path"})


@pytest.fixture
def bucket(s3):
    name = f"batch-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def record(record_id, text):
    return {
        "recordId": record_id,
        "modelInput": {
            "system": [{"text": "Extract the invoice."}],
            "messages": [{"role": "user", "content": [{"text": text}]}],
            "inferenceConfig": {"maxTokens": 512, "temperature": 0},
            "toolConfig": {
                "tools": [{"toolSpec": {"name": "invoice", "description": "The invoice", "inputSchema": {"json": SCHEMA}}}],
                "toolChoice": {"tool": {"name": "invoice"}},
            },
        },
    }


def upload(s3, bucket, key, count):
    lines = [record(f"CALL{i:07d}", f"Invoice {i} from ACME, total {i * 10}") for i in range(count)]
    s3.put_object(Bucket=bucket, Key=key, Body="".join(json.dumps(line) + "\n" for line in lines).encode())
    return lines


def create(bedrock, bucket, name, key="input/part-0001.jsonl", **extra):
    return bedrock.create_model_invocation_job(
        jobName=name,
        roleArn=ROLE,
        modelId=MODEL,
        modelInvocationType="Converse",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/{key}", "s3InputFormat": "JSONL"}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/output/"}},
        timeoutDurationInHours=24,
        tags=[{"key": "pipeline", "value": "invoices"}],
        **extra,
    )["jobArn"]


def wait_ended(bedrock, arn):
    job = wait_for(lambda: bedrock.get_model_invocation_job(jobIdentifier=arn), lambda j: j["status"] in ENDED)
    assert job["status"] in ENDED, job
    return job


def error_code(raised):
    return raised.value.response["Error"]["Code"], raised.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_round_trip_writes_out_files_and_a_manifest(bedrock, s3, bucket):
    lines = upload(s3, bucket, "input/part-0001.jsonl", 120)
    arn = create(bedrock, bucket, "invoices-round-trip")
    job_id = arn.rsplit("/", 1)[1]
    assert arn == f"arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/{job_id}"
    first = bedrock.get_model_invocation_job(jobIdentifier=arn)
    assert first["status"] in {"Submitted", "Validating"}
    assert first["jobName"] == "invoices-round-trip" and first["modelId"] == MODEL and first["roleArn"] == ROLE
    assert first["submitTime"].tzinfo is not None and first["timeoutDurationInHours"] == 24
    assert first["jobExpirationTime"] > first["submitTime"]

    statuses = set()
    done = wait_for(lambda: bedrock.get_model_invocation_job(jobIdentifier=job_id),
                    lambda j: statuses.add(j["status"]) or j["status"] in ENDED)
    assert done["status"] == "Completed", done
    assert {"Validating", "Scheduled", "InProgress"} & statuses
    assert done["endTime"] >= done["submitTime"] and "message" not in done

    out = s3.get_object(Bucket=bucket, Key=f"output/{job_id}/part-0001.jsonl.out")["Body"].read().decode()
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["recordId"] for r in results) == [line["recordId"] for line in lines]
    by_id = {line["recordId"]: line for line in lines}
    for result in results:
        assert set(result) == {"recordId", "modelInput", "modelOutput"}
        assert result["modelInput"] == by_id[result["recordId"]]["modelInput"]
        output = result["modelOutput"]
        assert set(output) == {"output", "stopReason", "usage", "metrics"}
        assert output["stopReason"] == "tool_use"
        (block,) = output["output"]["message"]["content"]
        assert block["toolUse"]["name"] == "invoice" and block["toolUse"]["toolUseId"]
        assert set(block["toolUse"]["input"]) == {"vendor", "total"}
        usage = output["usage"]
        assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"output/{job_id}/manifest.json.out")["Body"].read())
    assert manifest == {
        "totalRecordCount": 120,
        "processedRecordCount": 120,
        "successRecordCount": 120,
        "errorRecordCount": 0,
        "inputTokenCount": sum(r["modelOutput"]["usage"]["inputTokens"] for r in results),
        "outputTokenCount": sum(r["modelOutput"]["usage"]["outputTokens"] for r in results),
    }
    tags = bedrock.list_tags_for_resource(resourceARN=arn)["tags"]
    assert tags == [{"key": "pipeline", "value": "invoices"}]


def test_list_pages_and_filters(bedrock, s3, bucket, bedrock_emulator):
    upload(s3, bucket, "input/part-0001.jsonl", 100)
    # The beta jobs name no input object: they fail validation.
    arns = [
        create(bedrock, bucket, f"{kind}-{i}", key=f"input/{'part-0001' if kind == 'alpha' else 'missing'}.jsonl")
        for i, kind in enumerate(["alpha", "beta", "alpha", "beta", "alpha"])
    ]
    pages = list(bedrock.get_paginator("list_model_invocation_jobs").paginate(PaginationConfig={"PageSize": 2}))
    assert [len(page["invocationJobSummaries"]) for page in pages] == [2, 2, 1]
    listed = [summary["jobArn"] for page in pages for summary in page["invocationJobSummaries"]]
    assert listed == arns[::-1], "newest first"
    ascending = bedrock.list_model_invocation_jobs(sortBy="CreationTime", sortOrder="Ascending")
    assert [s["jobArn"] for s in ascending["invocationJobSummaries"]] == arns

    alpha = bedrock.list_model_invocation_jobs(nameContains="alpha")["invocationJobSummaries"]
    assert sorted(s["jobName"] for s in alpha) == ["alpha-0", "alpha-2", "alpha-4"]
    advance(bedrock_emulator)
    failed = bedrock.list_model_invocation_jobs(statusEquals="Failed")["invocationJobSummaries"]
    assert [s["jobArn"] for s in failed] == [arns[3], arns[1]]
    assert all("does not exist" in s["message"] for s in failed)
    completed = bedrock.list_model_invocation_jobs(statusEquals="Completed", nameContains="alpha-2")
    assert [s["jobArn"] for s in completed["invocationJobSummaries"]] == [arns[2]]
    assert completed["invocationJobSummaries"][0]["successRecordCount"] == 100
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.list_model_invocation_jobs(statusEquals="Done")
    assert error_code(raised) == ("ValidationException", 400)


def test_stop_a_running_job(bedrock, s3, bucket):
    upload(s3, bucket, "input/part-0001.jsonl", 100)
    arn = create(bedrock, bucket, "to-stop")
    bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert bedrock.get_model_invocation_job(jobIdentifier=arn)["status"] == "Stopping"
    assert wait_ended(bedrock, arn)["status"] == "Stopped"
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.stop_model_invocation_job(jobIdentifier=arn)
    assert error_code(raised) == ("ValidationException", 400)


def test_bad_signatures_are_refused(bedrock_emulator):
    for secret, key, code in [("wrong", "test", "InvalidSignatureException"), ("test", "AKIAUNKNOWN", "UnrecognizedClientException")]:
        with pytest.raises(botocore.exceptions.ClientError) as raised:
            client(bedrock_emulator, "bedrock", secret=secret, key=key).list_model_invocation_jobs()
        assert error_code(raised) == (code, 403)


def test_fewer_than_the_minimum_of_records_fails_the_job(bedrock, s3, bucket):
    upload(s3, bucket, "input/part-0001.jsonl", 12)
    job = wait_ended(bedrock, create(bedrock, bucket, "too-small"))
    assert job["status"] == "Failed"
    assert "12 records" in job["message"] and "minimum of 100" in job["message"], job["message"]


def test_client_request_tokens_are_idempotent(bedrock, bucket):
    token = str(uuid.uuid4())
    first = create(bedrock, bucket, "idempotent", clientRequestToken=token)
    assert create(bedrock, bucket, "idempotent", clientRequestToken=token) == first
    assert bedrock.get_model_invocation_job(jobIdentifier=first)["clientRequestToken"] == token
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        create(bedrock, bucket, "idempotent", key="input/other.jsonl", clientRequestToken=token)
    assert error_code(raised) == ("ConflictException", 400)
    assert len(bedrock.list_model_invocation_jobs()["invocationJobSummaries"]) == 1


def test_create_refuses_what_botocore_models_refuse(bedrock, bucket):
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        create(bedrock, bucket, "-bad-name")
    assert error_code(raised) == ("ValidationException", 400)
    assert "jobName" in raised.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.create_model_invocation_job(
            jobName="unknown-model",
            roleArn=ROLE,
            modelId="anthropic.claude-unknown-v1:0",
            inputDataConfig={"s3InputDataConfig": {"s3Uri": f"s3://{bucket}/in.jsonl"}},
            outputDataConfig={"s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/out/"}},
        )
    assert error_code(raised) == ("ValidationException", 400)
    with pytest.raises(botocore.exceptions.ClientError) as raised:
        bedrock.get_model_invocation_job(jobIdentifier="abcdefabcdef")
    assert error_code(raised) == ("ResourceNotFoundException", 404)
