"""What every YAML family shares: the strict model bases, safe identifiers, type names and secret references."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from config.errors import quoted
from config.types import parse_type

ENV_PREFIX = "KEYFLOW_"  # the one prefix of keyflow's environment variables
IDENT_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,62}\Z")  # \Z: "$" would accept a trailing newline


def _ident(value: str) -> str:
    if not isinstance(value, str) or not IDENT_RE.match(value):
        shown = quoted(value) if isinstance(value, str) else repr(value)
        raise ValueError(
            f"{shown} is not a safe identifier (ASCII letters, digits and _, not starting with a digit, "
            "at most 63 characters)"
        )
    return value


def _type_name(value: str) -> str:
    return str(parse_type(value))


Ident = Annotated[str, AfterValidator(_ident)]
TypeName = Annotated[str, AfterValidator(_type_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FileModel(_Model):
    """A model loaded from its own YAML file, which its errors name."""

    _file: str = PrivateAttr("config")

    @property
    def file(self) -> str:
        """The YAML file this came from, as errors show it."""
        return self._file


def _exactly_one(model: BaseModel, what: str, names: tuple[str, ...]) -> None:
    if sum(1 for n in names if getattr(model, n)) != 1:
        raise ValueError(f"{what} takes exactly one of: {', '.join(names)}")


def _relative_key(v: str) -> str:
    parts = v.replace("\\", "/").split("/")
    if v.startswith("/") or ".." in parts:
        raise ValueError(f"{v!r} must be a relative S3 key without '..'")
    return v.strip("/")


class SecretRef(_Model):
    """Where a secret comes from. Secret values never live in YAML."""

    env: str | None = Field(None, description="environment variable")
    prefect_secret: str | None = Field(None, description="name of a Prefect Secret block")
    aws_secret: str | None = Field(None, description="AWS Secrets Manager secret id")
    aws_secret_field: str | None = Field(None, description="JSON field inside the AWS secret")

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        _exactly_one(self, "a secret reference", ("env", "prefect_secret", "aws_secret"))
        return self
