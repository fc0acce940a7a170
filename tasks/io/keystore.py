"""DynamoDB key table adapter: partition key ``dataset``, sort key ``key``; Query with pagination, never Scan."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from config.errors import KeyFailedError, quoted
from tasks.io.aws import DynamoTable, translate
from tasks.transforms.keys import CampaignKey, active_keys, validate_key


class KeyStore(Protocol):
    """Where a dataset's keys live."""

    def ensure_table(self) -> None:
        """Create the key table when it does not exist."""

    def sse_status(self) -> str | None:
        """The table's server-side encryption status (``ENABLED``…), or None when not encrypted with KMS."""

    def put_key(self, key: CampaignKey) -> None:
        """Insert or replace one key."""

    def list_keys(self, dataset: str) -> list[CampaignKey]:
        """Every key of a dataset, sorted by key."""

    def active_keys(self, dataset: str, on: date) -> list[CampaignKey]:
        """The keys of ``dataset`` active on ``on``."""

    def set_enabled(self, dataset: str, key: str, enabled: bool) -> None:
        """Enable or disable a key; a missing key is an error, not a silent insert."""

    def delete_key(self, dataset: str, key: str) -> None:
        """Remove a key; a missing key is an error, so a typo never passes for a deletion."""

    def probe(self) -> bool:
        """Whether the key table exists (a quick client: a down endpoint is reported in seconds)."""


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class DynamoKeyStore(DynamoTable):
    """Keys in a DynamoDB table, reached through boto3 (a moto server or real AWS)."""

    key_schema = (("dataset", "HASH"), ("key", "RANGE"))

    def __init__(
        self,
        table: str,
        region: str,
        endpoint_url: str | None = None,
        kms_key_id: str | None = None,
        page_size: int | None = None,
    ) -> None:
        super().__init__(table, region, endpoint_url, kms_key_id)
        self.page_size = page_size

    def ensure_table(self) -> None:
        """Create the table (on-demand, SSE with KMS) when it does not exist."""
        self.ensure()

    def sse_status(self) -> str | None:
        """The table's server-side encryption status (``ENABLED``…), or None when not encrypted with KMS."""
        try:
            desc = self._ddb.describe_table(TableName=self.table)["Table"]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"describe table {self.table}") from exc
        return desc.get("SSEDescription", {}).get("Status")

    def put_key(self, key: CampaignKey) -> None:
        """Insert or replace one key."""
        validate_key(key.key)
        if key.end_date < key.start_date:
            raise ValueError(f"key {key.key!r}: end_date {key.end_date} is before start_date {key.start_date}")
        item: dict[str, Any] = {
            "dataset": {"S": key.dataset},
            "key": {"S": key.key},
            "start_date": {"S": key.start_date.isoformat()},
            "end_date": {"S": key.end_date.isoformat()},
            "enabled": {"BOOL": key.enabled},
        }
        if key.params:
            item["params"] = {"M": {k: _to_attr(v) for k, v in key.params.items()}}
        try:
            self._ddb.put_item(TableName=self.table, Item=item)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"put key {quoted(key.key)}") from exc

    def set_enabled(self, dataset: str, key: str, enabled: bool) -> None:
        """Enable or disable a key; a missing key is an error, not a silent insert.

        Raises:
            KeyFailedError: the dataset has no such key (or the table cannot be reached).
        """
        try:
            self._ddb.update_item(
                TableName=self.table,
                Key=_item_key(dataset, key),
                UpdateExpression="SET enabled = :e",
                ConditionExpression="attribute_exists(#k)",
                ExpressionAttributeNames={"#k": "key"},
                ExpressionAttributeValues={":e": {"BOOL": enabled}},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _key_error(exc, dataset, key, "update") from exc

    def delete_key(self, dataset: str, key: str) -> None:
        """Remove a key from the table; a missing key is an error, so a typo never passes for a deletion.

        Raises:
            KeyFailedError: the dataset has no such key (or the table cannot be reached).
        """
        try:
            self._ddb.delete_item(
                TableName=self.table,
                Key=_item_key(dataset, key),
                ConditionExpression="attribute_exists(#k)",
                ExpressionAttributeNames={"#k": "key"},
            )
        except (ClientError, BotoCoreError) as exc:
            raise _key_error(exc, dataset, key, "delete") from exc

    def _pages(self, dataset: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "dataset = :d",
            "ExpressionAttributeValues": {":d": {"S": dataset}},
            "ConsistentRead": True,
        }
        if self.page_size:
            kwargs["Limit"] = self.page_size
        while True:
            try:
                page = self._ddb.query(**kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, f"query keys of {dataset!r} in {self.table}") from exc
            yield from page.get("Items", [])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def list_keys(self, dataset: str) -> list[CampaignKey]:
        """Every key of a dataset, sorted by key."""
        return sorted((_from_item(i) for i in self._pages(dataset)), key=lambda k: k.key)

    def active_keys(self, dataset: str, on: date) -> list[CampaignKey]:
        """The keys of ``dataset`` active on ``on``."""
        return active_keys(self.list_keys(dataset), on)


def _item_key(dataset: str, key: str) -> dict[str, Any]:
    return {"dataset": {"S": dataset}, "key": {"S": key}}


def _key_error(exc: ClientError | BotoCoreError, dataset: str, key: str, verb: str) -> Exception:
    """``no key … in dataset …`` for a failed condition, else the translated boto error naming the key."""
    if isinstance(exc, ClientError) and exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
        return KeyFailedError(f"no key {quoted(key)} in dataset {quoted(dataset)}")
    return translate(exc, f"{verb} key {quoted(key)} of {quoted(dataset)}")


def _to_attr(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(value)}
    if value is None:
        return {"NULL": True}
    return {"S": str(value)}


def _from_attr(attr: dict[str, Any]) -> Any:
    ((kind, value),) = attr.items()
    if kind == "N":
        return _plain(Decimal(value))
    if kind == "M":
        return {k: _from_attr(v) for k, v in value.items()}
    if kind == "L":
        return [_from_attr(v) for v in value]
    if kind == "NULL":
        return None
    return value


def _from_item(item: dict[str, Any]) -> CampaignKey:
    return CampaignKey(
        dataset=item["dataset"]["S"],
        key=item["key"]["S"],
        start_date=date.fromisoformat(item["start_date"]["S"]),
        end_date=date.fromisoformat(item["end_date"]["S"]),
        enabled=bool(item.get("enabled", {"BOOL": True}).get("BOOL", True)),
        params=_from_attr(item["params"]) if "params" in item else {},
    )
