"""Field-level encryption: hybrid RSA-OAEP + AES-256-GCM, or a KMS data key. Pure (keys are passed in).

Each batch gets a fresh AES-256 data key; the data key is wrapped with the public key (RSA-OAEP, SHA-256) or by
KMS. Every value is self-contained text, so a warehouse cell can be decrypted on its own:

    kf1:<key id>:<wrapped data key, base64url>:<nonce + ciphertext + tag, base64url>

The key id is the public key's fingerprint (or ``kms`` + the KMS key), so rows written under an old key stay
readable after rotation. The column name is bound as associated data: a value moved to another column fails.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from tasks.transforms.exports import spreadsheet_safe

if TYPE_CHECKING:  # cryptography (7 MB, OpenSSL) is imported by the functions that encrypt or decrypt: a run
    # without an encrypt rule never loads it (tests/test_architecture.py guards the ETL command's imports)
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

PREFIX = "kf1"


@cache
def _oaep() -> padding.OAEP:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class DecryptError(ValueError):
    """A value cannot be decrypted (no key for its key id, wrong key, tampered, or not keyflow ciphertext)."""


class CellDecryptError(DecryptError):
    """A cell of a CSV cannot be decrypted; the message names its row (1 is the first after the header) and column."""


class MissingColumnError(ValueError):
    """A column asked for is not in the CSV's header row."""


class MalformedCsvError(ValueError):
    """The CSV cannot be read as CSV (a quote never closed, a row with more fields than the header).

    The message names the row (1 is the first after the header) and the line it starts on.
    """


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(public_key: rsa.RSAPublicKey) -> str:
    """Key id of a public key: the first 16 hex digits of the SHA-256 of its DER encoding."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def generate_key_pair(bits: int = 3072) -> tuple[bytes, bytes]:
    """A new RSA key pair as PEM: the private key (PKCS#8, unencrypted) and the public key (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key of at least 2048 bits from PEM bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise ValueError("the public key must be an RSA key of at least 2048 bits (PEM)")
    return key


def load_private_key(pem: bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    """An RSA private key from PEM bytes, decrypted with ``password`` when given."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = serialization.load_pem_private_key(pem, password=password)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the private key must be an RSA key (PEM)")
    return key


@dataclass(frozen=True)
class DataKey:
    """One batch's AES key: the plaintext (never stored) and its wrapped form (stored with every value)."""

    key_id: str
    plaintext: bytes
    wrapped: bytes


DataKeySource = Callable[[], DataKey]


def rsa_data_keys(public_key: rsa.RSAPublicKey) -> DataKeySource:
    """A source of fresh data keys wrapped with ``public_key`` (the pipeline never holds a private key)."""
    kid = fingerprint(public_key)

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def new() -> DataKey:
        dk = AESGCM.generate_key(bit_length=256)
        return DataKey(kid, dk, public_key.encrypt(dk, _oaep()))

    return new


def encrypt_values(values: Iterable[str | None], column: str, data_key: DataKey) -> list[str | None]:
    """Encrypt text values with one data key; nulls stay null."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(data_key.plaintext)
    head = f"{PREFIX}:{data_key.key_id}:{_b64(data_key.wrapped)}:"
    aad = column.encode()
    out: list[str | None] = []
    for v in values:
        if v is None:
            out.append(None)
            continue
        nonce = secrets.token_bytes(12)
        out.append(head + _b64(nonce + aead.encrypt(nonce, v.encode("utf-8"), aad)))
    return out


Unwrap = Callable[[str, bytes], bytes]  # (key id, wrapped data key) -> data key


def rsa_unwrapper(private_keys: Iterable[rsa.RSAPrivateKey]) -> Unwrap:
    """Unwrap data keys with whichever private key matches the value's key id (several for rotation)."""
    by_id = {fingerprint(k.public_key()): k for k in private_keys}

    def unwrap(key_id: str, wrapped: bytes) -> bytes:
        key = by_id.get(key_id)
        if key is None:
            raise DecryptError(f"no private key for key id {key_id} (have: {', '.join(sorted(by_id)) or 'none'})")
        try:
            return key.decrypt(wrapped, _oaep())
        except ValueError:
            raise DecryptError(f"key id {key_id}: the data key does not unwrap with this private key") from None

    return unwrap


def decrypt_value(text: str | None, column: str, unwrap: Unwrap, cache: dict[bytes, bytes] | None = None) -> str | None:
    """Decrypt one value written by :func:`encrypt_values` (``cache`` saves unwrapping a batch key twice)."""
    if text is None:
        return None
    parts = text.split(":")
    if len(parts) < 4 or parts[0] != PREFIX:
        raise DecryptError("not keyflow ciphertext (expected kf1:<key id>:<key>:<data>)")
    key_id, wrapped_b64, payload_b64 = ":".join(parts[1:-2]), parts[-2], parts[-1]
    try:
        wrapped, payload = _unb64(wrapped_b64), _unb64(payload_b64)
    except ValueError:
        raise DecryptError("not keyflow ciphertext (bad base64)") from None
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    memo = cache if cache is not None else {}
    if wrapped not in memo:
        memo[wrapped] = unwrap(key_id, wrapped)
    try:
        return AESGCM(memo[wrapped]).decrypt(payload[:12], payload[12:], column.encode()).decode("utf-8")
    except InvalidTag:
        raise DecryptError(f"column {column!r}: value was tampered with or belongs to another column") from None


def decrypt_columns(
    rows: Iterable[Mapping[str, str | None]], columns: Iterable[str], unwrap: Unwrap
) -> list[dict[str, str | None]]:
    """Decrypt the named columns of each row (other columns pass through)."""
    cols = list(columns)
    cache: dict[bytes, bytes] = {}
    out = []
    for row in rows:
        new = dict(row)
        for c in cols:
            new[c] = decrypt_value(row.get(c), c, unwrap, cache)
        out.append(new)
    return out


def _take(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def decrypt_csv(lines: Iterable[str], columns: Sequence[str], unwrap: Unwrap, raw: bool = False) -> Iterator[str]:
    """Decrypt the named columns of CSV text (header row first), yielding the CSV out a row at a time.

    An empty cell is a null and stays empty. Unless ``raw``, a decrypted value that a spreadsheet would run as a
    formula gets a leading single quote. Raises :class:`MissingColumnError` before yielding anything when a column is
    not in the header, :class:`CellDecryptError` (naming row and column) at the first cell that does not decrypt, and
    :class:`MalformedCsvError` (naming row and line) at the first row that is not CSV: the CSV is read strictly, so
    a quote that is never closed ends the output there instead of swallowing the rest of the file into one cell.
    """
    reader = csv.reader(lines, strict=True)
    try:
        fieldnames = next(reader, [])
    except csv.Error as exc:
        raise MalformedCsvError(f"header row: {_csv_problem(exc)}") from None
    missing = [c for c in columns if c not in fieldnames]
    if missing:
        raise MissingColumnError(f"no column {', '.join(missing)}")
    where = [fieldnames.index(c) for c in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(fieldnames)
    yield _take(buffer)
    cache: dict[bytes, bytes] = {}
    n, line = 1, reader.line_num + 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            raise MalformedCsvError(f"row {n} (line {line}): {_csv_problem(exc)}") from None
        if row is None:
            return
        if not row:  # a blank line, skipped as csv.DictReader does
            line = reader.line_num + 1
            continue
        if len(row) > len(fieldnames):
            raise MalformedCsvError(f"row {n} (line {line}): {len(row)} fields, the header has {len(fieldnames)}")
        row += [""] * (len(fieldnames) - len(row))
        for i, c in zip(where, columns, strict=True):
            try:
                plain = decrypt_value(row[i] or None, c, unwrap, cache) or ""
            except DecryptError as exc:
                raise CellDecryptError(f"row {n}, column {c!r}: {exc}") from None
            row[i] = plain if raw else spreadsheet_safe(plain)
        writer.writerow(row)
        n, line = n + 1, reader.line_num + 1
        yield _take(buffer)


def _csv_problem(exc: csv.Error) -> str:
    """The csv module's complaint in a user's words."""
    text = str(exc)
    if text == "unexpected end of data":
        return "a quoted field is never closed (unexpected end of file)"
    if text.startswith("field larger than field limit"):
        return f"a field is over {csv.field_size_limit():,} characters (a quote never closed?)"
    return text
