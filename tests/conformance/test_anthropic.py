"""The emulator's Anthropic Message Batches API, driven by the official anthropic SDK."""

import json

import anthropic
import pytest
from anthropic.types.messages import DeletedMessageBatch, MessageBatch, MessageBatchIndividualResponse

from conftest import advance, conforms, set_faults, wait_for

SCHEMA = {
    "type": "object",
    "properties": {
        "vendor": {"type": "string"},
        "total": {"type": "integer", "minimum": 0},
    },
    "required": ["vendor", "total"],
}


@pytest.fixture
def client(emulator):
    return anthropic.Anthropic(base_url=emulator, api_key="test-key", max_retries=0)


def request(custom_id, text):
    return {
        "custom_id": custom_id,
        "params": {
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [{"type": "text", "text": "Extract the invoice.", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": text}],
            "tools": [{"name": "invoice", "description": "The invoice", "input_schema": SCHEMA}],
            "tool_choice": {"type": "tool", "name": "invoice"},
        },
    }


def retrieve_checked(client, batch_id):
    raw = client.messages.batches.with_raw_response.retrieve(batch_id).http_response.json()
    assert set(raw) == set(MessageBatch.model_fields)
    return conforms(MessageBatch, raw)


def results(client, batch_id):
    """The batch's results by custom_id, each checked against the SDK type."""
    by_id = {}
    for line in client.messages.batches.results(batch_id):
        conforms(MessageBatchIndividualResponse, line.model_dump(mode="json", exclude_unset=True))
        assert line.custom_id not in by_id, "each custom_id appears once"
        by_id[line.custom_id] = line.result
    return by_id


def finish(client, emulator, batch_id):
    advance(emulator, batch_id)
    return retrieve_checked(client, batch_id)


def test_round_trip_with_faults(client, emulator):
    requests = [request(f"req-{i}", f"Invoice {i} from ACME") for i in range(4)]
    requests += [request(kind, f"[[fault:{kind}]]") for kind in ("refusal", "truncate", "rate_limit", "non_json")]
    batch = client.messages.batches.create(requests=requests)
    assert batch.processing_status == "in_progress"
    assert batch.request_counts.processing == len(requests)
    assert batch.results_url is None
    with pytest.raises(anthropic.AnthropicError):
        client.messages.batches.results(batch.id)

    done = finish(client, emulator, batch.id)
    assert done.processing_status == "ended" and done.ended_at is not None
    assert done.results_url == f"{emulator}/v1/messages/batches/{batch.id}/results"
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 7, 1)

    outcome = results(client, batch.id)
    assert set(outcome) == {r["custom_id"] for r in requests}
    for i in range(4):
        message = outcome[f"req-{i}"].message
        assert message.stop_reason == "tool_use"
        tool_use = message.content[0]
        assert tool_use.type == "tool_use" and tool_use.name == "invoice"
        assert isinstance(tool_use.input["vendor"], str) and tool_use.input["total"] >= 0
        assert message.usage.input_tokens > 0
    assert outcome["refusal"].message.stop_reason == "refusal"
    assert outcome["truncate"].message.stop_reason == "max_tokens"
    with pytest.raises(json.JSONDecodeError):
        json.loads(outcome["truncate"].message.content[0].text)
    assert [block.type for block in outcome["non_json"].message.content] == ["text"]
    assert outcome["rate_limit"].type == "errored"
    assert outcome["rate_limit"].error.error.type == "rate_limit_error"


def test_list_auto_paginates_newest_first(client):
    created = [client.messages.batches.create(requests=[request("only", "Invoice")]).id for _ in range(25)]
    listed = [batch.id for batch in client.messages.batches.list(limit=10)]
    assert listed == list(reversed(created))
    page = client.messages.batches.list(limit=5, before_id=created[10])
    assert [batch.id for batch in page.data] == list(reversed(created[11:16]))


def test_cancel_then_delete(client, emulator):
    requests = [request(f"req-{i}", f"Invoice {i}") for i in range(6)]
    batch = client.messages.batches.create(requests=requests)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None

    done = finish(client, emulator, batch.id)
    counts = done.request_counts
    assert counts.succeeded + counts.canceled == len(requests) and counts.processing == 0
    outcome = results(client, batch.id)
    assert sum(result.type == "canceled" for result in outcome.values()) == counts.canceled

    deleted = client.messages.batches.delete(batch.id)
    conforms(DeletedMessageBatch, deleted.model_dump())
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_expired_requests_are_reported(client, emulator):
    set_faults(emulator, {"batch_fate": "expire", "partial": 0.5})
    requests = [request(f"req-{i}", f"Invoice {i}") for i in range(4)]
    batch = client.messages.batches.create(requests=requests)
    done = wait_for(lambda: retrieve_checked(client, batch.id), lambda b: b.processing_status == "ended")
    assert (done.request_counts.succeeded, done.request_counts.expired) == (2, 2)
    assert sorted(result.type for result in results(client, batch.id).values()) == [
        "expired", "expired", "succeeded", "succeeded",
    ]


def test_bad_params_are_errored_results_not_a_refused_create(client, emulator):
    # Message Batches validate each request's params asynchronously: the create succeeds
    # and the bad request ends errored, beside a good one that succeeds.
    system_message = request("a", "Invoice")
    system_message["params"]["messages"].insert(0, {"role": "system", "content": "Be terse."})
    batch = client.messages.batches.create(requests=[system_message, request("b", "Invoice")])
    done = finish(client, emulator, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (1, 1)
    by_id = results(client, batch.id)
    assert by_id["b"].type == "succeeded"
    errored = by_id["a"]
    assert errored.type == "errored"
    assert errored.error.error.type == "invalid_request_error"
    assert "system" in errored.error.error.message


def test_output_config_answers_with_a_json_text_block(client, emulator):
    schema = {**SCHEMA, "properties": {"vendor": {"type": "string"}, "total": {"type": "integer"}},
              "additionalProperties": False}
    structured = request("s", "Invoice from Acme")
    del structured["params"]["tools"], structured["params"]["tool_choice"]
    structured["params"]["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    too_old = json.loads(json.dumps(structured))
    too_old["custom_id"] = "old"
    too_old["params"]["model"] = "claude-3-5-haiku-20241022"
    batch = client.messages.batches.create(requests=[structured, too_old])
    finish(client, emulator, batch.id)
    by_id = results(client, batch.id)
    message = by_id["s"].message
    assert message.stop_reason == "end_turn"
    assert [block.type for block in message.content] == ["text"]
    assert set(json.loads(message.content[0].text)) == {"vendor", "total"}
    assert by_id["old"].type == "errored"
    assert by_id["old"].error.error.type == "invalid_request_error"


def test_bad_requests_raise_typed_errors(client, emulator):
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=[request("not valid!", "Invoice")])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[request("a", "x"), request("a", "y")])
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_does_not_exist")
    wrong_key = anthropic.Anthropic(base_url=emulator, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        wrong_key.messages.batches.list()
