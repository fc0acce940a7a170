"""Resolve secret references (environment, Prefect Secret block, AWS Secrets Manager) to ``SecretStr``."""

from __future__ import annotations

import json
import os
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from config.errors import ConfigError
from config.models import SecretRef
from tasks.io.aws import client


def resolve_secret(ref: SecretRef, what: str, region: str, endpoint_url: str | None = None) -> SecretStr:
    """The secret's value; a missing one is a :class:`ConfigError` that names where it was looked for."""
    if ref.env:
        value = os.environ.get(ref.env)
        if value is None:
            raise ConfigError(f"{what}: environment variable {ref.env} is not set")
        return SecretStr(value)
    if ref.prefect_secret:
        from prefect.blocks.system import Secret  # Prefect only when a profile asks for a block

        try:
            block: Any = Secret.load(ref.prefect_secret)
            return SecretStr(str(block.get()))
        except ValueError as exc:
            raise ConfigError(f"{what}: Prefect Secret block {ref.prefect_secret!r}: {exc}") from None
    assert ref.aws_secret is not None
    sm = client("secretsmanager", region, endpoint_url)
    try:
        raw = sm.get_secret_value(SecretId=ref.aws_secret)["SecretString"]
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        raise ConfigError(f"{what}: AWS secret {ref.aws_secret!r}: {code}") from None
    except BotoCoreError as exc:
        raise ConfigError(f"{what}: AWS secret {ref.aws_secret!r}: {type(exc).__name__}") from None
    if ref.aws_secret_field:
        try:
            raw = json.loads(raw)[ref.aws_secret_field]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{what}: AWS secret {ref.aws_secret!r} has no JSON field {ref.aws_secret_field!r}"
            ) from None
    return SecretStr(str(raw))
