"""Field-level encryption outside the pipeline: key pairs on disk (`keygen`) and unwrappers (`decrypt`)."""

from __future__ import annotations

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


def write_key_pair(prefix: Path, bits: int = 3072) -> tuple[Path, Path, str]:
    """Write PREFIX.pem (private, mode 0600) and PREFIX.pub.pem; returns both paths and the key id.

    Raises:
        FileExistsError: either file exists (a key is never overwritten).
    """
    private = prefix.with_name(prefix.name + ".pem")
    public = prefix.with_name(prefix.name + ".pub.pem")
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
