#!/usr/bin/env python3
"""Adds up target/reliability/results.jsonl, written by the end-to-end tests (faults,
bad_input, security): one line per scenario with what it measured. Prints one line
per category; exits 1 if any request was lost or duplicated or any unexpected
provider batch was created, or if no scenario was recorded at all."""

import json
import pathlib
import sys

path = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/reliability/results.jsonl")
if not path.exists():
    print(f"reliability: {path} not found (run the end-to-end tests first)")
    sys.exit(1)

faults = bad_inputs = lost = duplicated = extra = known = 0
for line in path.read_text().splitlines():
    if not line.strip():
        continue
    row = json.loads(line)
    clean = row["lost"] == 0 and row["duplicated"] == 0 and row["extra_batches"] == 0
    if row["category"] == "fault":
        faults += clean
    else:
        bad_inputs += clean
    lost += row["lost"]
    duplicated += row["duplicated"]
    extra += row["extra_batches"]
    known += row["known_extra_batches"]

print(f"fault scenarios survived: {faults}")
print(f"bad inputs tried: {bad_inputs}")
print(f"requests lost: {lost}")
print(f"requests duplicated: {duplicated}")
print(f"duplicate provider batches: {extra}"
      + (f" (plus {known} known: Anthropic batches cannot be tagged, so one accepted just"
         " before a crash is created again; results stay exactly once)" if known else ""))
sys.exit(0 if faults + bad_inputs > 0 and lost == 0 and duplicated == 0 and extra == 0 else 1)
