"""Count CSV records in a byte stream without parsing it. Pure.

RFC 4180 as PostgreSQL's ``COPY … WITH (FORMAT csv)`` writes it: a field holding a delimiter, a quote or a line break
is quoted, a quote inside is doubled. A newline ends a record exactly when an even number of quote characters came
before it in the stream (a doubled quote toggles twice), so splitting each chunk on the quote character and counting
newlines in every other piece counts records at C speed.
"""

from __future__ import annotations


class CsvRecordCounter:
    """Counts record ends across chunks cut anywhere; ``inside`` says whether the stream stands in a quoted field."""

    def __init__(self) -> None:
        self.inside = False

    def feed(self, chunk: bytes, limit: int | None = None) -> tuple[int, int]:
        """Count record ends in ``chunk``, stopping after ``limit`` of them.

        Returns (records ended, bytes consumed): all of ``chunk``, or up to and including the newline that ended the
        ``limit``-th record (the rest is to be fed again).
        """
        if limit is not None and limit <= 0:
            return 0, 0
        if b'"' not in chunk:
            if self.inside:
                return 0, len(chunk)
            n = chunk.count(b"\n")
            if limit is None or n < limit:
                return n, len(chunk)
            return limit, _nth_newline(chunk, 0, limit) + 1
        pieces = chunk.split(b'"')
        records = 0
        offset = 0
        inside = self.inside
        for k, piece in enumerate(pieces):
            if k:
                inside = not inside  # the quote character between pieces k-1 and k
                offset += 1
            if not inside:
                n = piece.count(b"\n")
                if limit is not None and records + n >= limit:
                    end = _nth_newline(piece, 0, limit - records)
                    self.inside = False
                    return limit, offset + end + 1
                records += n
            offset += len(piece)
        self.inside = inside
        return records, len(chunk)


def _nth_newline(data: bytes, start: int, n: int) -> int:
    """Index of the ``n``-th (1-based) newline of ``data`` from ``start``."""
    at = start - 1
    for _ in range(n):
        at = data.index(b"\n", at + 1)
    return at
