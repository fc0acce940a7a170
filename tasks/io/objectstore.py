"""S3 adapter: every object written carries server-side encryption (SSE-KMS with a key id, else SSE-S3)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from config.errors import KeyFailedError, first_line
from tasks.io.aws import client, translate

PUBLIC_ACCESS_FLAGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")

_TRANSFER = TransferConfig(
    multipart_threshold=512 * 1024 * 1024, multipart_chunksize=64 * 1024 * 1024, use_threads=False
)


class ObjectStore(Protocol):
    """Where staged files live."""

    bucket: str

    def ensure_bucket(self) -> None:
        """Create the bucket with default encryption when missing."""

    def put_file(self, path: Path, key: str) -> None:
        """Upload a local file to ``key``."""

    def put_bytes(self, data: bytes, key: str, content_type: str = ...) -> None:
        """Write ``data`` to ``key``."""

    def open(self, key: str) -> IO[bytes]:
        """A streaming, file-like reader of one object."""

    def get_bytes(self, key: str) -> bytes:
        """The whole content of one object."""

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of one object."""

    def exists(self, key: str) -> bool:
        """Whether the object is there."""

    def list_keys(self, prefix: str) -> Iterator[str]:
        """The keys of the objects under ``prefix``."""

    def default_encryption(self) -> dict[str, Any] | None:
        """The bucket's default encryption rule, or None when it has none."""

    def list_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Objects under ``prefix`` with their key, size and last-modified time."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""

    def delete(self, key: str) -> None:
        """Delete one object (one already gone is fine)."""

    def delete_keys(self, keys: Sequence[str]) -> int:
        """Delete exactly these objects; returns how many were asked for."""

    def head(self, key: str) -> dict[str, Any]:
        """The object's metadata (size, encryption…) without its content."""

    def probe(self, prefix: str, write: bool = ...) -> None:
        """Check, before a run, that ``prefix`` can be listed and, when ``write``, written."""

    def incomplete_uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Multipart uploads under ``prefix`` that were started and never completed."""

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an incomplete multipart upload, dropping its parts."""


class S3ObjectStore:
    """A bucket reached through boto3 (a moto server or real S3)."""

    def __init__(
        self, bucket: str, region: str, endpoint_url: str | None = None, kms_key_id: str | None = None
    ) -> None:
        self.bucket = bucket
        self.region = region
        self.kms_key_id = kms_key_id
        self._s3 = client("s3", region, endpoint_url)

    @property
    def sse_args(self) -> dict[str, str]:
        """The server-side encryption arguments of every write: SSE-KMS with the key id, else SSE-S3."""
        if self.kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    def ensure_bucket(self) -> None:
        """Create the bucket with default encryption when missing (demo and tests; ``keyflow setup`` does more)."""
        if self.bucket_exists():
            return
        self.create_bucket()
        self.put_default_encryption()

    # --- bucket setup (`keyflow setup`): each property read and written on its own, so setup is idempotent

    def bucket_exists(self) -> bool:
        """Whether the bucket exists (a 404 is an answer; a 403 or any other error is raised)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
                return False
            raise translate(exc, f"head bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"head bucket {self.bucket}") from exc

    def create_bucket(self) -> None:
        """Create the bucket in the store's region (one created meanwhile by this account is accepted)."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._s3.create_bucket(**kwargs)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise translate(exc, f"create bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"create bucket {self.bucket}") from exc

    def put_default_encryption(self) -> None:
        """Default encryption of the bucket: SSE-KMS with the store's key, else SSE-S3."""
        rule: dict[str, Any] = {"SSEAlgorithm": "aws:kms" if self.kms_key_id else "AES256"}
        if self.kms_key_id:
            rule["KMSMasterKeyID"] = self.kms_key_id
        try:
            self._s3.put_bucket_encryption(
                Bucket=self.bucket,
                ServerSideEncryptionConfiguration={"Rules": [{"ApplyServerSideEncryptionByDefault": rule}]},
            )
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"put encryption of bucket {self.bucket}") from exc

    def _bucket_setting(self, get: Any, missing_code: str, what: str) -> dict[str, Any] | None:
        """One of the bucket's settings as S3 returns it, or None when the bucket has none (``missing_code``)."""
        try:
            return dict(get(Bucket=self.bucket))
        except ClientError as exc:
            if exc.response["Error"]["Code"] == missing_code:
                return None
            raise translate(exc, f"get {what} of bucket {self.bucket}") from exc
        except BotoCoreError as exc:  # the endpoint is down or unreachable
            raise translate(exc, f"get {what} of bucket {self.bucket}") from exc

    def public_access_block(self) -> dict[str, bool] | None:
        """The bucket's public access block flags, or None when it has none."""
        out = self._bucket_setting(
            self._s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration", "public access block"
        )
        return None if out is None else dict(out.get("PublicAccessBlockConfiguration", {}))

    def block_public_access(self) -> None:
        """Block every kind of public access to the bucket (ACLs and policies, new and existing)."""
        flags = dict.fromkeys(PUBLIC_ACCESS_FLAGS, True)
        try:
            self._s3.put_public_access_block(Bucket=self.bucket, PublicAccessBlockConfiguration=flags)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"put public access block of bucket {self.bucket}") from exc

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        """The bucket's lifecycle rules (empty when it has none)."""
        try:
            out = self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
                return []
            raise translate(exc, f"get lifecycle of bucket {self.bucket}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"get lifecycle of bucket {self.bucket}") from exc
        return list(out.get("Rules", []))

    def put_lifecycle_rules(self, rules: list[dict[str, Any]]) -> None:
        """Replace the bucket's lifecycle rules with ``rules`` (pass the existing ones to keep them)."""
        try:
            self._s3.put_bucket_lifecycle_configuration(Bucket=self.bucket, LifecycleConfiguration={"Rules": rules})
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"put lifecycle of bucket {self.bucket}") from exc

    def put_file(self, path: Path, key: str) -> None:
        """Upload a local file (multipart above 32 MiB) with SSE."""
        try:
            self._s3.upload_file(str(path), self.bucket, key, ExtraArgs=dict(self.sse_args), Config=_TRANSFER)
        except S3UploadFailedError as exc:  # boto3 wraps the service's refusal (SlowDown, AccessDenied…): read it
            cause = exc.__cause__ or exc.__context__  # raised inside boto3's `except ClientError`
            if not isinstance(cause, ClientError | BotoCoreError):
                raise KeyFailedError(f"upload s3://{self.bucket}/{key}: {first_line(exc)}") from exc
            raise translate(cause, f"upload s3://{self.bucket}/{key}") from exc
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"upload s3://{self.bucket}/{key}") from exc

    def put_bytes(self, data: bytes, key: str, content_type: str = "application/octet-stream") -> None:
        """Write ``data`` to ``key`` in one request, with SSE."""
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, **self.sse_args)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"put s3://{self.bucket}/{key}") from exc

    def open(self, key: str) -> IO[bytes]:
        """A streaming, file-like reader of one object."""
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read s3://{self.bucket}/{key}") from exc

    def get_bytes(self, key: str) -> bytes:
        """The whole content of one object, read into memory."""
        with self.open(key) as body:
            return body.read()

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of one object (a ranged GET: Parquet readers fetch only the columns they need)."""
        try:
            body = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}")["Body"]
            with body:
                return body.read()
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"read s3://{self.bucket}/{key}") from exc

    def head(self, key: str) -> dict[str, Any]:
        """The object's metadata (size, encryption…) without its content."""
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"head s3://{self.bucket}/{key}") from exc

    def exists(self, key: str) -> bool:
        """Whether the object is there (a 404 is an answer, any other error is raised)."""
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise translate(exc, f"head s3://{self.bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"head s3://{self.bucket}/{key}") from exc

    def list_keys(self, prefix: str) -> Iterator[str]:
        """The keys of the objects under ``prefix``, page by page."""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield obj["Key"]
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"list s3://{self.bucket}/{prefix}") from exc

    def default_encryption(self) -> dict[str, Any] | None:
        """The bucket's default encryption rule, or None when it has none."""
        out = self._bucket_setting(
            self._s3.get_bucket_encryption, "ServerSideEncryptionConfigurationNotFoundError", "encryption"
        )
        if out is None:
            return None
        rules = out.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
        return rules[0].get("ApplyServerSideEncryptionByDefault") if rules else None

    def list_objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Objects under ``prefix`` with their key, size and last-modified time."""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Contents", [])
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"list s3://{self.bucket}/{prefix}") from exc

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""
        return self.delete_keys(list(self.list_keys(prefix)), prefix)

    def delete_keys(self, keys: Sequence[str], what: str = "") -> int:
        """Delete exactly these objects (a missing one is no error); returns how many were asked for."""
        keys = list(keys)
        prefix = what or (keys[0] if keys else "")
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            try:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            except (ClientError, BotoCoreError) as exc:
                raise translate(exc, f"delete s3://{self.bucket}/{prefix}") from exc
        return len(keys)

    def delete(self, key: str) -> None:
        """Delete one object (one already gone is fine)."""
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"delete s3://{self.bucket}/{key}") from exc

    # --- leftovers (`keyflow cleanup`)

    def incomplete_uploads(self, prefix: str) -> Iterator[dict[str, Any]]:
        """Multipart uploads under ``prefix`` that were started and never completed (a killed upload's parts)."""
        paginator = self._s3.get_paginator("list_multipart_uploads")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield from page.get("Uploads", [])
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"list uploads of s3://{self.bucket}/{prefix}") from exc

    def abort_upload(self, key: str, upload_id: str) -> None:
        """Abort an incomplete multipart upload, dropping its parts (one already gone is fine)."""
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchUpload":
                raise translate(exc, f"abort upload of s3://{self.bucket}/{key}") from exc
        except BotoCoreError as exc:
            raise translate(exc, f"abort upload of s3://{self.bucket}/{key}") from exc

    def probe(self, prefix: str, write: bool = True) -> None:
        """Check, before a run, that ``prefix`` can be listed and, when ``write``, written.

        A small object is put with this store's SSE and deleted again. A quick client reports a down endpoint in
        seconds; errors are translated (a missing bucket or a refused grant is a ``ConfigError``).
        """
        s3 = client("s3", self._s3.meta.region_name, self._s3.meta.endpoint_url, quick=True)
        where = f"s3://{self.bucket}/{prefix.strip('/')}/"
        key = f"{prefix.strip('/')}/_keyflow_preflight_{uuid.uuid4().hex[:12]}"
        try:
            s3.list_objects_v2(Bucket=self.bucket, Prefix=prefix.strip("/") + "/", MaxKeys=1)
            if write:
                s3.put_object(Bucket=self.bucket, Key=key, Body=b"keyflow preflight probe\n", **self.sse_args)
                s3.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, where) from exc
