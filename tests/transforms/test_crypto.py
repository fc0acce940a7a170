"""Field-level encryption: round trips, key rotation, tampering, and what a pipeline without the key can do."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.transforms.crypto import (
    CellDecryptError,
    DecryptError,
    MalformedCsvError,
    MissingColumnError,
    decrypt_columns,
    decrypt_csv,
    decrypt_value,
    encrypt_values,
    fingerprint,
    generate_key_pair,
    load_private_key,
    load_public_key,
    rsa_data_keys,
    rsa_unwrapper,
)

OLD = rsa.generate_private_key(public_exponent=65537, key_size=2048)
NEW = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=20))
def test_round_trip_any_text(values: list[str | None]) -> None:
    data_key = rsa_data_keys(NEW.public_key())()
    encrypted = encrypt_values(values, "phone", data_key)
    unwrap = rsa_unwrapper([NEW])
    assert [decrypt_value(v, "phone", unwrap) for v in encrypted] == values
    for plain, cipher in zip(values, encrypted, strict=True):
        if plain and len(plain) >= 12:  # shorter texts can occur in random base64 by chance
            assert cipher is not None and plain not in cipher


def test_same_value_encrypts_differently_and_carries_its_key_id() -> None:
    dk = rsa_data_keys(NEW.public_key())()
    a, b = encrypt_values(["+33612345678", "+33612345678"], "phone", dk)
    assert a != b
    assert a is not None and a.startswith(f"kf1:{fingerprint(NEW.public_key())}:")


def test_rotation_keeps_old_rows_readable() -> None:
    old_rows = [{"phone": v} for v in encrypt_values(["111"], "phone", rsa_data_keys(OLD.public_key())())]
    new_rows = [{"phone": v} for v in encrypt_values(["222"], "phone", rsa_data_keys(NEW.public_key())())]
    both = rsa_unwrapper([NEW, OLD])
    assert decrypt_columns(old_rows + new_rows, ["phone"], both) == [{"phone": "111"}, {"phone": "222"}]
    with pytest.raises(DecryptError, match=f"no private key for key id {fingerprint(OLD.public_key())}"):
        decrypt_columns(old_rows, ["phone"], rsa_unwrapper([NEW]))


def test_tampering_and_column_swaps_are_detected() -> None:
    (value,) = encrypt_values(["secret"], "phone", rsa_data_keys(NEW.public_key())())
    assert value is not None
    unwrap = rsa_unwrapper([NEW])
    with pytest.raises(DecryptError, match="tampered with or belongs to another column"):
        decrypt_value(value, "email", unwrap)
    head, payload = value.rsplit(":", 1)
    flipped = head + ":" + ("A" if payload[0] != "A" else "B") + payload[1:]
    with pytest.raises(DecryptError, match="tampered"):
        decrypt_value(flipped, "phone", unwrap)
    with pytest.raises(DecryptError, match="not keyflow ciphertext"):
        decrypt_value("+33612345678", "phone", unwrap)


def test_generated_key_pair_round_trips() -> None:
    private_pem, public_pem = generate_key_pair(2048)
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(private_pem), load_public_key(public_pem)
    assert private.key_size == 2048 and fingerprint(private.public_key()) == fingerprint(public)
    (value,) = encrypt_values(["+33612345678"], "phone", rsa_data_keys(public)())
    assert decrypt_value(value, "phone", rsa_unwrapper([private])) == "+33612345678"
    assert generate_key_pair(2048)[1] != public_pem


def encrypted_csv(rows: list[tuple[str, str | None, str]]) -> list[str]:
    """A CSV export (id, phone, note) with phone encrypted under NEW; None is a NULL (an empty cell)."""
    data_key = rsa_data_keys(NEW.public_key())()
    phones = encrypt_values([phone for _, phone, _ in rows], "phone", data_key)
    lines = ["id,phone,note\r\n"]
    lines += [f"{i},{phone or ''},{note}\r\n" for (i, _, note), phone in zip(rows, phones, strict=True)]
    return lines


def test_decrypt_csv_decrypts_the_chosen_columns_only() -> None:
    lines = encrypted_csv([("1", "+33612345678", "kept"), ("2", None, "=1+1"), ("3", "plain", "x")])
    out = "".join(decrypt_csv(lines, ["phone"], rsa_unwrapper([NEW])))
    # The decrypted "+336…" would run as a spreadsheet formula: guarded; an empty cell stays empty; note untouched.
    assert out == "id,phone,note\r\n1,'+33612345678,kept\r\n2,,=1+1\r\n3,plain,x\r\n"
    raw = "".join(decrypt_csv(lines, ["phone"], rsa_unwrapper([NEW]), raw=True))
    assert raw.splitlines()[1] == "1,+33612345678,kept"


def test_decrypt_csv_names_the_row_and_column_that_fail() -> None:
    lines = encrypted_csv([("1", "a", "x"), ("2", "b", "y")])
    lines[2] = lines[2].replace(",y", ",not-ciphertext")
    out = decrypt_csv(lines, ["phone", "note"], rsa_unwrapper([NEW]), raw=True)
    assert next(out) == "id,phone,note\r\n"
    with pytest.raises(CellDecryptError, match=r"^row 1, column 'note': not keyflow ciphertext"):
        next(out)
    with pytest.raises(
        CellDecryptError, match=f"^row 1, column 'phone': no private key for key id {fingerprint(NEW.public_key())}"
    ):
        list(decrypt_csv(lines, ["phone"], rsa_unwrapper([OLD])))


def test_decrypt_csv_refuses_a_missing_column_before_writing_anything() -> None:
    out = decrypt_csv(["id,phone\r\n", "1,x\r\n"], ["phone", "email", "ssn"], rsa_unwrapper([NEW]))
    with pytest.raises(MissingColumnError, match="^no column email, ssn$"):
        next(out)
    with pytest.raises(MissingColumnError, match="^no column phone$"):
        next(decrypt_csv([], ["phone"], rsa_unwrapper([NEW])))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["id,phone\r\n", "1,\r\n", '2,"never closed\r\n', "3,\r\n"], "row 2 (line 3): a quoted field is never closed"),
        (["id,phone\r\n", '"multi\r\n', 'line",\r\n', '2,"x"y\r\n'], "row 2 (line 4): ',' expected after '\"'"),
        (["id,phone\r\n", "\r\n", "1,,extra\r\n"], "row 1 (line 3): 3 fields, the header has 2"),
        (['id,"phone\r\n', "1,\r\n"], "header row: a quoted field is never closed"),
    ],
)
def test_decrypt_csv_stops_at_the_first_row_that_is_not_csv(lines: list[str], message: str) -> None:
    """An unterminated quote used to swallow the rest of the file into one cell and exit 0."""
    with pytest.raises(MalformedCsvError) as caught:
        list(decrypt_csv(lines, ["phone"], rsa_unwrapper([NEW])))
    assert str(caught.value).startswith(message)


def test_decrypt_csv_skips_blank_lines_and_pads_short_rows() -> None:
    out = "".join(decrypt_csv(["id,phone,note\r\n", "\r\n", "1\r\n"], ["phone"], rsa_unwrapper([NEW])))
    assert out == "id,phone,note\r\n1,,\r\n"
