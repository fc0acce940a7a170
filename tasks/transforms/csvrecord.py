"""Have MySQL/MariaDB write each row as one staged CSV record, byte for byte what Arrow's CSV writer stages. Pure.

The parsed path stages a row as :func:`~tasks.transforms.arrow.csv_write_options` writes it: every string quoted
(``""`` the empty string, a quote doubled), NULL an empty unquoted field, and Arrow's own text for the rest. When no
rule is left for the client, the source renders that same text itself (:func:`render_record_query`) and its bytes
go to the compressor untouched. Per Arrow type of the pushed query's column:

- integers: the digits (``CAST(x AS CHAR)``).
- doubles: MariaDB prints the shortest round-trip digits, as Arrow does, but chooses plain or exponent notation
  by other bounds. Both print plain for a decimal exponent in [-6, 9] (and zero), where the text is taken as is;
  outside it the digits are re-laid as Arrow does (``1.5e+15``, ``1e-7``).
- decimals: plain with every digit of the scale (``42.0000000000``), except where Arrow (after Java's BigDecimal)
  switches to exponent notation: an adjusted exponent below -6, so ``-1E-10`` and ``0E-10`` at scale 10.
- dates ``YYYY-MM-DD``, timestamps ``YYYY-MM-DD HH:MM:SS.ffffff`` (six digits always).
- text: converted to utf8mb4, quoted, quotes doubled. A binary-charset column (bytes) is refused: MariaDB would
  turn an invalid UTF-8 byte into ``?`` where the parsed path fails the key.

Any other column (FLOAT, TIME, YEAR, BIT, booleans, time zones…) has no exact rendering here: :func:`why_not_rendered`
says why, and the key takes the parsed path.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from tasks.transforms.sql import quote_ident

# MySQL protocol column types (the same numbers in every driver's FIELD_TYPE constants).
_INTEGER = {1: "TINYINT", 2: "SMALLINT", 3: "INT", 8: "BIGINT", 9: "MEDIUMINT"}
_DOUBLE = {5: "DOUBLE"}
_DECIMAL = {0: "DECIMAL", 246: "DECIMAL"}
_DATE = {10: "DATE", 14: "DATE"}
_DATETIME = {7: "TIMESTAMP", 12: "DATETIME"}
_TEXT = {
    15: "VARCHAR",
    245: "JSON",
    247: "ENUM",
    248: "SET",
    249: "TINYTEXT",
    250: "MEDIUMTEXT",
    251: "LONGTEXT",
    252: "TEXT",
    253: "VARCHAR",
    254: "CHAR",
}
_NAMES = {4: "FLOAT", 6: "NULL", 11: "TIME", 13: "YEAR", 16: "BIT", 255: "GEOMETRY"}

_ALIAS = "kf_rec"


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _allowed(t: pa.DataType) -> dict[int, str]:
    """The protocol types whose server text is the Arrow text of ``t``."""
    if pa.types.is_integer(t):
        return _INTEGER
    if pa.types.is_float64(t):
        return _DOUBLE
    if pa.types.is_decimal(t):
        return _DECIMAL
    if pa.types.is_date32(t):
        return _DATE
    if pa.types.is_timestamp(t) and t.tz is None and t.unit == "us":
        return _DATETIME
    if _is_text(t):
        return _TEXT
    return {}


def why_not_rendered(
    schema: pa.Schema, type_codes: Sequence[int], scales: Sequence[int | None], charsets: dict[str, str]
) -> str | None:
    """Why the source cannot render these columns as staged CSV (``None``: every column is covered).

    ``type_codes`` and ``scales`` are the query's result metadata (one per column, in order); ``charsets`` the
    character set of each text column (``CHARSET()`` on the server).
    """
    if len(type_codes) != len(schema):
        return f"the query returns {len(type_codes)} columns, the target has {len(schema)}"
    for field, code, scale in zip(schema, type_codes, scales, strict=True):
        allowed = _allowed(field.type)
        if not allowed:
            return f"column {field.name!r} is staged as {field.type}, which MariaDB cannot write as Arrow does"
        if code not in allowed:
            got = {**_INTEGER, **_DOUBLE, **_DECIMAL, **_DATE, **_DATETIME, **_TEXT, **_NAMES}.get(code, f"type {code}")
            return f"column {field.name!r} is {got} on the source, staged as {field.type}: no exact text for it"
        if pa.types.is_decimal(field.type) and scale is not None and scale != field.type.scale:
            return f"column {field.name!r} has scale {scale} on the source, {field.type.scale} staged"
        if _is_text(field.type) and charsets.get(field.name, "binary") == "binary":
            return f"column {field.name!r} holds bytes (binary charset), not text"
    return None


def _double(x: str) -> str:
    """A DOUBLE as Arrow writes it (shortest round-trip digits, exponent outside [-6, 9])."""
    t = f"CAST(ABS({x}) AS CHAR)"
    # MariaDB's own text outside the common range is either "1.5e15" (mantissa already normalised) or plain
    # ("15000000000", "0.0000000015"): then the digits are re-laid around the first non-zero one.
    digits = f"REPLACE({t}, '.', '')"
    stripped = f"TRIM(LEADING '0' FROM {digits})"
    significant = f"TRIM(TRAILING '0' FROM {stripped})"
    exponent = f"(LOCATE('.', CONCAT({t}, '.')) - 2 - (CHAR_LENGTH({digits}) - CHAR_LENGTH({stripped})))"
    plain_to_exp = (
        f"CONCAT(LEFT({significant}, 1), IF(CHAR_LENGTH({significant}) > 1, CONCAT('.', SUBSTRING({significant}, 2)), "
        f"''), 'e', IF({exponent} > 0, '+', ''), {exponent})"
    )
    mantissa = f"SUBSTRING_INDEX({t}, 'e', 1)"
    power = f"SUBSTRING_INDEX({t}, 'e', -1)"
    exp_to_exp = f"CONCAT({mantissa}, 'e', IF(LEFT({power}, 1) = '-', '', '+'), {power})"
    other = f"CONCAT(IF({x} < 0, '-', ''), IF(LOCATE('e', {t}) > 0, {exp_to_exp}, {plain_to_exp}))"
    return f"CASE WHEN {x} = 0 OR (ABS({x}) >= 1e-6 AND ABS({x}) < 1e10) THEN CAST({x} AS CHAR) ELSE {other} END"


def _decimal(x: str, scale: int) -> str:
    """A DECIMAL as Arrow writes it: plain, or BigDecimal's exponent form below an adjusted exponent of -6."""
    if scale <= 6:  # the adjusted exponent is at least -scale: always plain
        return f"CAST({x} AS CHAR)"
    unscaled = f"TRIM(LEADING '0' FROM REPLACE(CAST(ABS({x}) AS CHAR), '.', ''))"
    digits = f"IF({unscaled} = '', '0', {unscaled})"
    tiny = (
        f"CONCAT(IF({x} < 0, '-', ''), LEFT({digits}, 1), "
        f"IF(CHAR_LENGTH({digits}) > 1, CONCAT('.', SUBSTRING({digits}, 2)), ''), "
        f"'E', CHAR_LENGTH({digits}) - {1 + scale})"
    )
    return f"CASE WHEN ABS({x}) >= 0.000001 THEN CAST({x} AS CHAR) ELSE {tiny} END"


def render_field(name: str, t: pa.DataType) -> str:
    """One column's CSV field as SQL text (a NULL value: the empty string).

    Only a value's NULL becomes the empty field: a rendering that yields NULL for a value that is there (MySQL's
    string functions return NULL past ``max_allowed_packet``, with a warning only; a date it cannot format) stays
    NULL, so the record is NULL and the key fails instead of loading a value as NULL.
    """
    x = f"{_ALIAS}.{quote_ident(name, 'mysql')}"
    if _is_text(t):
        return f"""IF({x} IS NULL, '', CONCAT('"', REPLACE(CONVERT({x} USING utf8mb4), '"', '""'), '"'))"""
    if pa.types.is_float64(t):
        sql = _double(x)
    elif pa.types.is_decimal(t):
        sql = _decimal(x, t.scale)
    elif pa.types.is_date32(t):
        sql = f"DATE_FORMAT({x}, '%Y-%m-%d')"
    elif pa.types.is_timestamp(t):
        sql = f"DATE_FORMAT({x}, '%Y-%m-%d %H:%i:%s.%f')"
    else:
        sql = f"CAST({x} AS CHAR)"
    return f"IF({x} IS NULL, '', {sql})"


def render_record_query(sql: str, schema: pa.Schema) -> str:
    """One UTF-8 CSV record (bytes, no newline) per row of ``sql``, fields as :func:`render_field` writes them.

    ``CONCAT`` (not ``CONCAT_WS``, which skips a NULL): a field that could not be rendered makes the record NULL.
    """
    fields = ", ',', ".join(render_field(f.name, f.type) for f in schema)
    record = f"CAST(CONVERT(CONCAT({fields}) USING utf8mb4) AS BINARY)"
    return f"SELECT {record} FROM ({sql}) AS {_ALIAS}"  # noqa: S608 - quoted identifiers, bound values


def render_metadata_query(sql: str, schema: pa.Schema) -> str:
    """No rows, but the result metadata of ``sql`` (its columns' protocol types)."""
    return f"SELECT * FROM ({sql}) AS {_ALIAS} LIMIT 0"  # noqa: S608 - the key query, bound values


def render_charset_query(sql: str, names: Sequence[str]) -> str:
    """One row: the character set of each named column of ``sql`` (a NULL-extended row keeps the column's type)."""
    cols = ", ".join(f"CHARSET({_ALIAS}.{quote_ident(n, 'mysql')})" for n in names)
    return (
        f"SELECT {cols} FROM (SELECT 1 AS kf_one) AS kf_one "  # noqa: S608 - quoted identifiers
        f"LEFT JOIN (SELECT * FROM ({sql}) AS kf_inner LIMIT 0) AS {_ALIAS} ON TRUE"
    )


def csv_header(names: Sequence[str]) -> bytes:
    """The header line Arrow's CSV writer stages: every name quoted."""
    return (",".join('"' + n.replace('"', '""') + '"' for n in names) + "\n").encode()
