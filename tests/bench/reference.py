"""The Python reference side of `make bench`: instructor's BatchProcessor on the same data.

Run by batchline-bench, one measurement per process (so that its peak RSS is its own):

    reference.py build PROVIDER REQUESTS_FILE   # create_batch_from_messages(file_path=None)
    reference.py parse PROVIDER RESULTS_FILE    # parse_results(content)
    reference.py requests PROVIDER CONVERSATIONS_FILE OUT_FILE
        # the cost section: writes the batch input create_batch_from_messages builds
        # (one request per conversation, the library's defaults) to OUT_FILE

Reading the input is not timed; only the library call is (time.perf_counter). The last
stdout line is a JSON report {"seconds", "bytes", "items", "peak_rss_bytes"}. Peak RSS
is VmHWM from /proc/self/status: resource.getrusage's ru_maxrss would also count the
copy of the (large) benchmark process this one was forked from before exec.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from typing import Literal

from instructor.batch import BatchProcessor, BatchSuccess
from pydantic import BaseModel, ConfigDict

MODELS = {
    "openai": "openai/gpt-4o-mini",
    "anthropic": "anthropic/claude-sonnet-4-5",
}


class Invoice(BaseModel):
    """The bench's five-field schema (batchline: `workload::invoice_schema`)."""

    model_config = ConfigDict(extra="forbid")

    vendor: str
    total: float
    currency: Literal["EUR", "USD"]
    paid: bool
    lines: list[str]


def read_conversations(path: str) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


class InvoiceRecord(BaseModel):
    """The cost section's nine-field schema (batchline: `cost::record_schema`), whose
    answers are about 60 tokens, as the workload of the cost target says."""

    model_config = ConfigDict(extra="forbid")

    invoice_number: str
    issue_date: str
    vendor: str
    customer: str
    payment_terms_days: int
    currency: Literal["EUR", "USD"]
    subtotal: float
    total: float
    lines: list[str]


def build(processor: BatchProcessor, path: str) -> dict:
    conversations = read_conversations(path)
    # The library prints a line per batch; keep stdout for the report.
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        buffer = processor.create_batch_from_messages(conversations, file_path=None)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "bytes": len(buffer.getbuffer()),
        "items": len(conversations),
    }


def requests(processor: BatchProcessor, path: str, out_path: str) -> dict:
    """The requests the library builds, written as is for the bench to bill."""
    conversations = read_conversations(path)
    with contextlib.redirect_stdout(io.StringIO()):
        started = time.perf_counter()
        buffer = processor.create_batch_from_messages(conversations, file_path=None)
        seconds = time.perf_counter() - started
    with open(out_path, "wb") as f:
        f.write(buffer.getbuffer())
    return {
        "seconds": seconds,
        "bytes": len(buffer.getbuffer()),
        "items": len(conversations),
    }


def parse(processor: BatchProcessor, path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        content = f.read()
    started = time.perf_counter()
    results = processor.parse_results(content)
    seconds = time.perf_counter() - started
    failed = [r for r in results if not isinstance(r, BatchSuccess)]
    if failed:
        raise SystemExit(f"{len(failed)} results failed, first: {failed[0]!r}"[:2000])
    return {"seconds": seconds, "bytes": os.path.getsize(path), "items": len(results)}


def peak_rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise SystemExit("no VmHWM in /proc/self/status")


def main() -> None:
    mode, provider, path = sys.argv[1:4]
    if mode == "requests":
        report = requests(BatchProcessor(MODELS[provider], InvoiceRecord), path, sys.argv[4])
    else:
        processor = BatchProcessor(MODELS[provider], Invoice)
        report = {"build": build, "parse": parse}[mode](processor, path)
    report["peak_rss_bytes"] = peak_rss_bytes()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
