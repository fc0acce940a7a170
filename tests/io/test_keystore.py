"""The DynamoDB key table on the moto server: Query with pagination, active-date logic, enable/disable."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.errors import KeyFailedError
from tasks.io.keystore import DynamoKeyStore
from tasks.transforms.keys import CampaignKey


@pytest.fixture()
def store(aws_endpoint: str, names: dict[str, str]) -> DynamoKeyStore:
    s = DynamoKeyStore(names["keys_table"], "us-east-1", aws_endpoint, page_size=2)
    s.ensure_table()
    return s


def test_active_keys_overlap_and_paginate(store: DynamoKeyStore) -> None:
    d = "facts"
    for key, start, end, enabled in [
        ("MCS2017", "2017-03-01", "2017-03-31", True),
        ("SPRING17", "2017-03-15", "2017-04-15", True),
        ("VIP17", "2017-03-10", "2017-03-20", True),
        ("OLD", "2016-01-01", "2016-12-31", True),
        ("OFF", "2017-03-01", "2017-03-31", False),
    ]:
        store.put_key(CampaignKey(d, key, date.fromisoformat(start), date.fromisoformat(end), enabled, {"n": 1}))
    store.put_key(CampaignKey("other", "MCS2017", date(2017, 1, 1), date(2017, 12, 31)))
    assert [k.key for k in store.active_keys(d, date(2017, 3, 20))] == ["MCS2017", "SPRING17", "VIP17"]
    assert [k.key for k in store.active_keys(d, date(2017, 3, 21))] == ["MCS2017", "SPRING17"]  # end is inclusive
    assert [k.key for k in store.active_keys(d, date(2017, 5, 1))] == []
    listed = store.list_keys(d)  # 5 items through pages of 2
    assert len(listed) == 5 and listed[0].params == {"n": 1}


def test_disable_and_enable(store: DynamoKeyStore) -> None:
    store.put_key(CampaignKey("facts", "K1", date(2020, 1, 1), date(2020, 1, 31)))
    store.set_enabled("facts", "K1", False)
    assert store.active_keys("facts", date(2020, 1, 10)) == []
    store.set_enabled("facts", "K1", True)
    assert [k.key for k in store.active_keys("facts", date(2020, 1, 10))] == ["K1"]
    with pytest.raises(KeyFailedError, match="no key 'nope' in dataset 'facts'"):
        store.set_enabled("facts", "nope", False)


def test_sql_looking_key_is_plain_data(store: DynamoKeyStore) -> None:
    evil = "x'); drop table t; --"
    store.put_key(CampaignKey("facts", evil, date(2020, 1, 1), date(2020, 1, 2)))
    assert [k.key for k in store.active_keys("facts", date(2020, 1, 1))] == [evil]


def test_bad_keys_are_refused(store: DynamoKeyStore) -> None:
    with pytest.raises(ValueError, match="end_date 2020-01-01 is before start_date 2020-02-01"):
        store.put_key(CampaignKey("facts", "K", date(2020, 2, 1), date(2020, 1, 1)))
    with pytest.raises(ValueError, match="control characters"):
        store.put_key(CampaignKey("facts", "K\n1", date(2020, 1, 1), date(2020, 1, 2)))
    with pytest.raises(ValueError, match="a key is 1 to 256 characters"):
        store.put_key(CampaignKey("facts", "K" * 257, date(2020, 1, 1), date(2020, 1, 2)))


@settings(max_examples=200, deadline=None)
@given(
    start=st.dates(date(2020, 1, 1), date(2021, 1, 1)),
    length=st.integers(0, 60),
    offset=st.integers(-90, 90),
    enabled=st.booleans(),
)
def test_active_means_enabled_and_within_inclusive_dates(start: date, length: int, offset: int, enabled: bool) -> None:
    k = CampaignKey("d", "k", start, start + timedelta(days=length), enabled)
    on = start + timedelta(days=offset)
    assert k.is_active(on) == (enabled and 0 <= offset <= length)
