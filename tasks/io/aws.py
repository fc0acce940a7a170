"""boto3 clients from a profile: one cached client per (service, region, endpoint), retries in botocore."""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, EndpointConnectionError

from config.errors import KeyFailedError, RetryableError

_lock = threading.Lock()
_clients: dict[tuple[str, str, str | None], Any] = {}

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


def client(service: str, region: str, endpoint_url: str | None = None) -> Any:
    """A thread-safe boto3 client (sessions are not thread-safe, so clients are made under a lock)."""
    cache_key = (service, region, endpoint_url)
    with _lock:
        if cache_key not in _clients:
            kwargs: dict[str, Any] = {}
            if endpoint_url and not os.environ.get("AWS_ACCESS_KEY_ID"):
                # An emulated endpoint (moto) accepts any credentials; real AWS uses the standard chain.
                kwargs.update(aws_access_key_id="keyflow", aws_secret_access_key="keyflow")
            session = boto3.session.Session()
            _clients[cache_key] = session.client(
                service,
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    retries={"max_attempts": 8, "mode": "adaptive"},
                    max_pool_connections=32,
                    # Staged parts are checked by row counts at load; skip a second CRC pass over every byte.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
                **kwargs,
            )
        return _clients[cache_key]


def reset_clients() -> None:
    """Forget cached clients (after an endpoint changes, e.g. between test sessions)."""
    with _lock:
        _clients.clear()


def translate(exc: Exception, what: str) -> Exception:
    """Map a boto error to keyflow's retry-or-fail classes, naming what was being done."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        message = exc.response.get("Error", {}).get("Message", "")
        if code in TRANSIENT_CODES:
            return RetryableError(f"{what}: {code}: {message}")
        return KeyFailedError(f"{what}: {code}: {message}")
    if isinstance(exc, EndpointConnectionError | ConnectionError):
        return RetryableError(f"{what}: {exc}")
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

    def exists(self) -> bool:
        """Whether the table exists (a missing table is an answer; any other error is raised)."""
        try:
            self._ddb.describe_table(TableName=self.table)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                return False
            raise translate(exc, f"describe table {self.table}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"describe table {self.table}") from exc
