"""`keyflow keygen`, `decrypt` and `audit`: encryption keys, reading encrypted columns, encryption at rest."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli.common import ProfileOpt
from flows.cli.output import FAILED, err, fail, hint, out, print_findings, reports_errors
from flows.cli.setup import cleanup_hint


@reports_errors
def keygen(
    out_: Annotated[
        str,
        typer.Option(
            "--out",
            help="file prefix: writes PREFIX.pem (private) and PREFIX.pub.pem; a folder (keys/) gets "
            "keys/keyflow.pem and keys/keyflow.pub.pem",
        ),
    ],
    bits: Annotated[int, typer.Option("--bits", min=2048, max=8192)] = 3072,
) -> None:
    """Make an RSA key pair for field-level encryption; give the .pub.pem to the pipeline, keep the .pem apart."""
    from tasks.encryption import write_key_pair

    if not out_.strip():
        fail("--out: give a file prefix (keys/phone) or a folder (keys/)")
    try:
        private, public, key_id = write_key_pair(out_, bits)
    except FileExistsError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"--out: cannot write {exc.filename or out_}: {exc.strerror or exc}")
    out.print(
        f"Wrote {public} (for the profile's encryption_keys) and {private} (keep it away from the pipeline); "
        f"key id {key_id}.",
        highlight=False,
    )


@reports_errors
def decrypt(
    source: Annotated[Path, typer.Argument(help="CSV with a header row (e.g. exported from the warehouse)")],
    columns: Annotated[list[str], typer.Option("--column", "-c", help="column to decrypt (repeatable)")],
    private_keys: Annotated[
        list[Path] | None, typer.Option("--private-key", "-k", help="RSA private key PEM (repeatable: rotation)")
    ] = None,
    kms: Annotated[bool, typer.Option("--kms", help="unwrap data keys with KMS Decrypt (profile's endpoint)")] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="keep values starting with = + - @ as they are (no spreadsheet guard)")
    ] = False,
    profile: ProfileOpt = "local",
) -> None:
    """Decrypt the named columns of a CSV to standard output (only a private-key or KMS holder can).

    The output is meant for people: a decrypted value that a spreadsheet would run as a formula (it starts with
    =, +, -, @, tab or carriage return) is prefixed with a single quote unless --raw is given.
    """
    from tasks.encryption import kms_unwrapper_for, private_key_unwrapper
    from tasks.transforms.crypto import CellDecryptError, MalformedCsvError, MissingColumnError, decrypt_csv

    try:
        f = source.open(newline="", encoding="utf-8")
    except OSError as exc:
        fail(f"{source}: {_os_problem(exc)}")
    with f:
        if kms:
            from config.loader import load_profile

            unwrap = kms_unwrapper_for(load_profile(profile))
        else:
            if not private_keys:
                fail("give --private-key (one per key id) or --kms")
            try:
                unwrap = private_key_unwrapper(private_keys)
            except OSError as exc:
                fail(f"--private-key: {exc.filename}: {_os_problem(exc)}")
            except ValueError as exc:
                fail(f"--private-key: {exc}")
        try:
            for text in decrypt_csv(f, columns, unwrap, raw=raw):
                sys.stdout.write(text)
        except (MissingColumnError, MalformedCsvError) as exc:
            fail(f"{source}: {exc}")
        except CellDecryptError as exc:
            fail(f"{source}: {exc}", code=FAILED)
        except UnicodeDecodeError as exc:
            fail(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} is {exc.reason})")


def _os_problem(exc: OSError) -> str:
    """Why a file cannot be opened, in a user's words."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    return exc.strerror or str(exc)


@reports_errors
def audit_cmd(
    profile: ProfileOpt = "local",
    max_age_hours: Annotated[float, typer.Option("--max-age-hours", min=0)] = 24.0,
) -> None:
    """Check encryption at rest (bucket default, key table, every staged object) and leftover staged files."""
    from datetime import timedelta

    from config.loader import load_profile
    from tasks.audit import audit

    findings = audit(load_profile(profile), timedelta(hours=max_age_hours))
    print_findings(findings)
    bad = [f for f in findings if not f.ok]
    if bad:
        err.print(f"{len(bad)} problem(s) found")
        leftovers = sum(f.check == "leftover staged file" for f in bad)
        if leftovers:
            hint(f"{leftovers} leftover staged file(s): {cleanup_hint(profile, timedelta(hours=max_age_hours))}")
        raise typer.Exit(FAILED)
