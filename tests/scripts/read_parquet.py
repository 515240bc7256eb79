"""Reads a directory of Parquet files as users do, with pyarrow and with DuckDB's
read_parquet('dir/*.parquet'), and prints both as one JSON document:
{"pyarrow": {"types": {column: type}, "rows": [...]}, "duckdb": {...}}, rows ordered
by custom_id. Used by tests/tests/tables.rs.

Usage: read_parquet.py DIR
"""

import json
import sys

import duckdb
import pyarrow.parquet as pq


def main() -> None:
    directory = sys.argv[1]
    table = pq.read_table(directory).sort_by("custom_id")
    with_pyarrow = {
        "types": {field.name: str(field.type) for field in table.schema},
        "rows": table.to_pylist(),
    }
    relation = duckdb.sql(
        f"SELECT * FROM read_parquet('{directory}/*.parquet') ORDER BY custom_id"
    )
    with_duckdb = {
        "types": {name: str(kind) for name, kind in zip(relation.columns, relation.types)},
        "rows": [dict(zip(relation.columns, row)) for row in relation.fetchall()],
    }
    json.dump({"pyarrow": with_pyarrow, "duckdb": with_duckdb}, sys.stdout)


if __name__ == "__main__":
    main()
