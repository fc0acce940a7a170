"""The passthrough writer on the moto server: parts cut on record ends, each with the header, rows counted."""

from __future__ import annotations

import csv
import io

import pytest
import zstandard

from config.errors import KeyFailedError
from tasks.io.objectstore import S3ObjectStore
from tasks.io.passthrough import CsvPassthroughWriter

HEADER = b"id,label\n"


@pytest.fixture()
def store(aws_endpoint: str, names: dict[str, str]) -> S3ObjectStore:
    s = S3ObjectStore(names["bucket"], "us-east-1", aws_endpoint)
    s.ensure_bucket()
    return s


def body(n: int) -> bytes:
    """``n`` records whose labels hold quoted newlines, quotes and commas, as PostgreSQL's COPY writes them."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for i in range(n):
        writer.writerow([i, ["", 'a "q"\nb', "x,y", "\n\n"][i % 4]])
    return buf.getvalue().encode()


def read_part(store: S3ObjectStore, key: str) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(store.get_bytes(key))


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_parts_are_cut_on_record_ends_each_with_the_header(store: S3ObjectStore, chunk: int) -> None:
    data = HEADER + body(25)
    writer = CsvPassthroughWriter(store, "p/", "zstd", 1, part_rows=10)
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
    parts = writer.close()
    assert [p.rows for p in parts] == [10, 10, 5]
    texts = [read_part(store, p.key) for p in parts]
    assert all(t.startswith(HEADER) for t in texts)
    assert b"".join(t[len(HEADER) :] for t in texts) == data[len(HEADER) :]
    rows = [r for t in texts for r in list(csv.reader(io.StringIO(t.decode())))[1:]]
    assert [int(r[0]) for r in rows] == list(range(25))


def test_an_empty_key_stages_one_header_only_part(store: S3ObjectStore) -> None:
    writer = CsvPassthroughWriter(store, "e/", "zstd", 1)
    writer.write(HEADER)
    parts = writer.close()
    assert [p.rows for p in parts] == [0] and read_part(store, parts[0].key) == HEADER


def test_a_last_record_without_its_newline_counts_and_gets_one(store: S3ObjectStore) -> None:
    writer = CsvPassthroughWriter(store, "n/", "zstd", 1)
    writer.write(HEADER + b'1,"a\nb"\n2,c')
    parts = writer.close()
    assert parts[0].rows == 2 and read_part(store, parts[0].key) == HEADER + b'1,"a\nb"\n2,c\n'


def test_a_stream_cut_inside_a_quoted_field_fails_the_key(store: S3ObjectStore) -> None:
    writer = CsvPassthroughWriter(store, "q/", "zstd", 1)
    writer.write(HEADER + b'1,"never closed')
    with pytest.raises(KeyFailedError, match="ended inside a quoted field"):
        writer.close()
    writer.abort()


def test_a_stream_without_a_header_line_fails_the_key(store: S3ObjectStore) -> None:
    writer = CsvPassthroughWriter(store, "h/", "zstd", 1)
    with pytest.raises(KeyFailedError, match="had no header line"):
        writer.close()
    writer.abort()
