"""What a key may be: refused keys say which rule they break in one line, a long one echoed cut."""

from __future__ import annotations

import pytest

from tasks.transforms.keys import check_lookup_key, validate_key


@pytest.mark.parametrize("key", ["MCS2017", "x'); drop table t; --", "a b", "ünïcødé 日本", "K" * 256, "a/b\\c"])
def test_keys_that_are_plain_data_are_accepted(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "a key may not be empty"),
        ("   ", "a key may not be blank (only whitespace), got '   '"),
        ("\u3000", "a key may not be blank (only whitespace), got '\\u3000'"),
        (" MCS2017", "a key may not start or end with whitespace, got ' MCS2017'"),
        ("MCS2017 ", "a key may not start or end with whitespace, got 'MCS2017 '"),
        ("MCS\t2017", "a key may not contain control characters, got 'MCS\\t2017'"),
        ("MCS2017\n", "a key may not contain control characters, got 'MCS2017\\n'"),
        ("a\x85b", "a key may not contain control characters, got 'a\\x85b'"),
        ("K" * 257, "a key is 1 to 256 characters, got '" + "K" * 40 + "'… (257 characters)"),
        ("K" * 10_000, "a key is 1 to 256 characters, got '" + "K" * 40 + "'… (10,000 characters)"),
    ],
)
def test_refused_keys_say_why_in_one_short_line(key: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_key(key)
    assert str(caught.value) == message


def test_a_key_to_look_up_may_be_one_stored_before_the_rules() -> None:
    assert check_lookup_key(" old ") == " old "  # so it can still be disabled and deleted
    with pytest.raises(ValueError, match="^a key may not be empty$"):
        check_lookup_key("")
    with pytest.raises(ValueError, match=r"^a key is 1 to 256 characters, got 'KKKK.*'… \(300 characters\)$"):
        check_lookup_key("K" * 300)
