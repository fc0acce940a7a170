"""KMS envelope encryption for field-level encryption: GenerateDataKey per batch, Decrypt for key holders."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

from tasks.io.aws import client, translate
from tasks.transforms.crypto import DataKey, DataKeySource, DecryptError, Unwrap


def kms_data_keys(kms_key_id: str, region: str, endpoint_url: str | None = None) -> DataKeySource:
    """Fresh AES-256 data keys from KMS; only the encrypted blob is stored with the values."""
    kms = client("kms", region, endpoint_url)

    def new() -> DataKey:
        try:
            out = kms.generate_data_key(KeyId=kms_key_id, KeySpec="AES_256")
        except (ClientError, BotoCoreError) as exc:
            raise translate(exc, f"KMS GenerateDataKey with {kms_key_id}") from exc
        return DataKey(f"kms={kms_key_id}", out["Plaintext"], out["CiphertextBlob"])

    return new


def check_kms_key(kms_key_id: str, region: str, endpoint_url: str | None = None) -> str | None:
    """Why ``kms_key_id`` cannot be used (disabled, pending deletion), None when it can.

    A missing key or a refused grant raises :class:`ConfigError`. A quick client: a down endpoint is reported in
    seconds.
    """
    kms = client("kms", region, endpoint_url, quick=True)
    try:
        meta = kms.describe_key(KeyId=kms_key_id)["KeyMetadata"]
    except (ClientError, BotoCoreError) as exc:
        raise translate(exc, f"KMS key {kms_key_id}") from exc
    if not meta.get("Enabled", True):
        return f"KMS key {kms_key_id} is {meta.get('KeyState', 'disabled')}"
    return None


def kms_unwrapper(region: str, endpoint_url: str | None = None) -> Unwrap:
    """Unwrap data keys with KMS Decrypt (needs kms:Decrypt on the key)."""
    kms = client("kms", region, endpoint_url)

    def unwrap(key_id: str, wrapped: bytes) -> bytes:
        if not key_id.startswith("kms="):
            raise DecryptError(f"key id {key_id} was not written with KMS; use its private key")
        try:
            return bytes(kms.decrypt(CiphertextBlob=wrapped)["Plaintext"])
        except ClientError as exc:
            raise DecryptError(f"KMS Decrypt refused: {exc.response['Error'].get('Code', 'error')}") from None
        except BotoCoreError as exc:  # the endpoint is down or unreachable
            raise translate(exc, "KMS Decrypt") from exc

    return unwrap
