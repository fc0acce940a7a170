"""Field-level encryption outside the pipeline: key pairs on disk (`keygen`) and unwrappers (`decrypt`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from config.models import Profile
from tasks.transforms.crypto import (
    Unwrap,
    fingerprint,
    generate_key_pair,
    load_private_key,
    load_public_key,
    rsa_unwrapper,
)

DEFAULT_KEY_NAME = "keyflow"


def key_pair_paths(out: str | Path) -> tuple[Path, Path]:
    """Where ``keygen --out OUT`` writes the private and the public key.

    ``OUT.pem`` and ``OUT.pub.pem``; but when ``OUT`` is an existing folder or ends with a slash (``--out keys/``),
    inside it: ``OUT/keyflow.pem`` and ``OUT/keyflow.pub.pem``.
    """
    text = str(out)
    base = Path(text)
    if text.endswith(("/", os.sep)) or base.is_dir():
        base = base / DEFAULT_KEY_NAME
    return base.with_name(base.name + ".pem"), base.with_name(base.name + ".pub.pem")


def write_key_pair(out: str | Path, bits: int = 3072) -> tuple[Path, Path, str]:
    """Write the private key (mode 0600) and the public key where :func:`key_pair_paths` says.

    Returns:
        The private key's path, the public key's path and the key id.

    Raises:
        FileExistsError: either file exists (a key is never overwritten).
        OSError: the folder cannot be made or written.
    """
    private, public = key_pair_paths(out)
    if private.exists() or public.exists():
        raise FileExistsError(f"{private} or {public} exists; keyflow never overwrites a key")
    private_pem, public_pem = generate_key_pair(bits)
    private.parent.mkdir(parents=True, exist_ok=True)
    private.touch(mode=0o600)
    private.write_bytes(private_pem)
    public.write_bytes(public_pem)
    return private, public, fingerprint(load_public_key(public_pem))


def private_key_unwrapper(paths: Iterable[Path]) -> Unwrap:
    """Unwrap data keys with the RSA private keys in these PEM files (several for rotation).

    Raises:
        OSError: a file cannot be read.
        ValueError: a file is not an RSA private key.
    """
    return rsa_unwrapper([load_private_key(p.read_bytes()) for p in paths])


def kms_unwrapper_for(profile: Profile) -> Unwrap:
    """Unwrap data keys with KMS Decrypt at the profile's region and endpoint."""
    from tasks.io.kms import kms_unwrapper  # boto3 only when KMS is asked for

    return kms_unwrapper(profile.aws_region, profile.aws_endpoint_url)
