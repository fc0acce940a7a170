"""boto3 clients from a profile: one cached client per (service, region, endpoint), retries in botocore."""

from __future__ import annotations

import os
import re
import socket
import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError,
    EndpointConnectionError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
)

from config.errors import ConfigError, KeyFailedError, RetryableError, first_line
from tasks.io.net import dns_is_down

_lock = threading.Lock()
_clients: dict[tuple[str, str, str | None, bool], Any] = {}
# One session for every client: its loader keeps each service's model and the endpoint rules once parsed, where a
# session per client parsed them again for each (a run makes five or six clients; S3's model alone is ~14 MB).
# Sessions are not thread-safe, so it is only used under ``_lock``; the clients it makes are.
_session: boto3.session.Session | None = None

TRANSIENT_CODES = {
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "SlowDown",
    "InternalServerError",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "TransactionConflictException",
}

# Codes no retry can fix: the credentials, a grant, or the name of a bucket, table, stream or key is wrong.
PERMANENT_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "AllAccessDisabled",
    "AuthFailure",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "KMS.NotFoundException",
    "KMSAccessDeniedException",
    "MissingAuthenticationToken",
    "NoSuchBucket",
    "NotFoundException",
    "ResourceNotFoundException",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "403",  # HEAD requests carry no error body: the status is the code
}


def client(service: str, region: str, endpoint_url: str | None = None, quick: bool = False) -> Any:
    """A thread-safe boto3 client, made from the process's one session under a lock (sessions are not thread-safe).

    ``quick`` clients (checks before a run) try twice with short timeouts: a down or mistyped endpoint is reported in
    seconds, where a run's clients keep retrying.
    """
    global _session
    cache_key = (service, region, endpoint_url, quick)
    with _lock:
        if cache_key not in _clients:
            if _session is None:
                _session = boto3.session.Session()
            kwargs: dict[str, Any] = {}
            if endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID"):
                # An emulated endpoint (moto) accepts any credentials; real AWS uses the standard chain.
                kwargs.update(aws_access_key_id="keyflow", aws_secret_access_key="keyflow")
            _clients[cache_key] = _session.client(
                service,
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    retries={"max_attempts": 2, "mode": "standard"}
                    if quick
                    else {"max_attempts": 8, "mode": "adaptive"},
                    connect_timeout=5 if quick else 60,
                    read_timeout=15 if quick else 60,
                    max_pool_connections=32,
                    # Staged parts are checked by row counts at load; skip a second CRC pass over every byte.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
                **kwargs,
            )
        return _clients[cache_key]


def reset_clients() -> None:
    """Forget cached clients and the session (its credentials), after an endpoint or the environment changes."""
    global _session
    with _lock:
        _clients.clear()
        _session = None


def unknown_host(exc: BaseException) -> bool:
    """Whether a connection error comes from a host name that does not resolve (a typo in ``aws_endpoint_url``)."""
    seen: BaseException | None = exc
    for _ in range(8):  # botocore → urllib3 NameResolutionError → socket.gaierror
        if seen is None:
            return False
        if dns_is_down(seen):
            return False  # the resolver failed for now: a retry may get through
        if isinstance(seen, socket.gaierror) or type(seen).__name__ == "NameResolutionError":
            return True
        seen = getattr(seen, "kwargs", {}).get("error") or seen.__cause__ or seen.__context__
    return False


def translate(exc: Exception, what: str) -> Exception:
    """Map a boto error to keyflow's classes, naming what was being done.

    Throttling and connection trouble retry (:class:`RetryableError`); a refused credential or grant, a missing
    bucket, table or stream, or an endpoint whose host does not resolve is a :class:`ConfigError` at once; anything
    else fails the key.
    """
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if message.lstrip().startswith("<"):  # an XML error body left unparsed (an emulator's 403): read it
            inner = dict(re.findall(r"<(Code|Message)>([^<]*)</\1>", message))
            code, message = inner.get("Code", code), inner.get("Message", "")
        message = first_line(message, default="")
        if code in TRANSIENT_CODES:
            return RetryableError(f"{what}: {code}: {message}")
        if code in PERMANENT_CODES:
            return ConfigError(f"{what}: {code}: {message or 'access denied'}")
        return KeyFailedError(f"{what}: {code}: {message}")
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        if unknown_host(exc):
            return ConfigError(f"{what}: {exc} (the host name does not resolve)")
        return RetryableError(f"{what}: {exc}")
    if isinstance(exc, HTTPClientError | IncompleteReadError):
        # The connection dropped mid-request or mid-response (ConnectionClosedError, ReadTimeoutError, a body cut
        # short): the endpoint was reached, so a retry on a fresh connection can succeed.
        return RetryableError(f"{what}: {first_line(exc)}")
    if isinstance(exc, NoCredentialsError):
        return ConfigError(f"{what}: no AWS credentials found (environment, profile or instance role)")
    if isinstance(exc, BotoCoreError):
        return KeyFailedError(f"{what}: {exc}")
    return exc


def ensure_dynamodb_table(ddb: Any, table: str, keys: list[tuple[str, str]], kms_key_id: str | None = None) -> bool:
    """Create an on-demand table with SSE (KMS) when it does not exist; ``keys`` are (name, HASH|RANGE), strings.

    Returns True when this call created it. A concurrent creator's table is accepted.
    """
    try:
        ddb.describe_table(TableName=table)
        return False
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise translate(exc, f"describe table {table}") from exc
    except BotoCoreError as exc:  # the endpoint is down or unreachable: one line, not botocore's traceback
        raise translate(exc, f"describe table {table}") from exc
    sse: dict[str, Any] = {"Enabled": True, "SSEType": "KMS"}
    if kms_key_id:
        sse["KMSMasterKeyId"] = kms_key_id
    try:
        ddb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name, _ in keys],
            KeySchema=[{"AttributeName": name, "KeyType": kind} for name, kind in keys],
            BillingMode="PAY_PER_REQUEST",
            SSESpecification=sse,
        )
        ddb.get_waiter("table_exists").wait(TableName=table)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise translate(exc, f"create table {table}") from exc
        return False
    except BotoCoreError as exc:
        raise translate(exc, f"create table {table}") from exc
    return True


class DynamoTable:
    """A DynamoDB table an adapter owns: its name, key schema, KMS key and a cached client."""

    key_schema: tuple[tuple[str, str], ...] = ()

    def __init__(self, table: str, region: str, endpoint_url: str | None = None, kms_key_id: str | None = None) -> None:
        self.table = table
        self.kms_key_id = kms_key_id
        self._ddb = client("dynamodb", region, endpoint_url)

    def ensure(self) -> bool:
        """Create the table (on demand, SSE with KMS) when missing; True when this call created it."""
        return ensure_dynamodb_table(self._ddb, self.table, list(self.key_schema), self.kms_key_id)

    def probe(self) -> bool:
        """Whether the table exists (a quick client: a down endpoint is reported in seconds); errors translated."""
        ddb = client("dynamodb", self._ddb.meta.region_name, self._ddb.meta.endpoint_url, quick=True)
        try:
            ddb.describe_table(TableName=self.table)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                return False
            raise translate(exc, f"DynamoDB table {self.table}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"DynamoDB table {self.table}") from exc
        return True
