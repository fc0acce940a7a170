"""Seed the embedded demo: a SQLite source with campaign facts, a DynamoDB key table, a KMS key and a bucket."""

from __future__ import annotations

import random
import sqlite3
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

from config.models import Profile
from tasks.io.aws import client
from tasks.io.emulator import EmbeddedAWS
from tasks.resources import resources_for
from tasks.setup import SetupStep, setup_resources
from tasks.transforms.keys import CampaignKey

DEMO_DATE = date(2017, 3, 20)
CAMPAIGNS = [
    # key, start, end, enabled — three overlap on DEMO_DATE; one is over, one is switched off.
    ("MCS2017", date(2017, 3, 1), date(2017, 3, 31), True),
    ("SPRING17", date(2017, 3, 15), date(2017, 4, 15), True),
    ("VIP17", date(2017, 3, 10), date(2017, 3, 25), True),
    ("WINTER16", date(2016, 12, 1), date(2017, 2, 28), True),
    ("PAUSED17", date(2017, 3, 1), date(2017, 3, 31), False),
]
CHANNELS = [" Web", "EMAIL ", "social", None, "Web"]


def embedded_aws() -> EmbeddedAWS:
    """DynamoDB, S3 and KMS emulated in this process on a free loopback port; a context manager (start, stop)."""
    return EmbeddedAWS()


def create_kms_key(profile: Profile) -> str:
    """A KMS key on the (emulated) endpoint for SSE-KMS of staged objects."""
    kms = client("kms", profile.aws_region, profile.aws_endpoint_url)
    return str(kms.create_key(Description="keyflow demo staging key")["KeyMetadata"]["KeyId"])


def seed_source(path: Path, rows_per_key: int = 2000, seed: int = 7) -> int:
    """(Re)create the SQLite source table with rows for every demo campaign; returns rows written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS campaign_facts")
        db.execute(
            """CREATE TABLE campaign_facts (
                id BIGINT PRIMARY KEY, campaign_key VARCHAR(32) NOT NULL, event_date DATE NOT NULL,
                sku VARCHAR(16), customer_email TEXT, phone TEXT, channel TEXT,
                impressions INTEGER, clicks INTEGER, revenue DECIMAL(12,2), updated_at TIMESTAMP)"""
        )
        n = 0
        for key, start, end, _ in CAMPAIGNS:
            span = (end - start).days + 1
            rows = []
            for _ in range(rows_per_key):
                n += 1
                day = start + timedelta(days=rnd.randrange(span))
                imp = rnd.randrange(0, 5000)
                rows.append(
                    (
                        n,
                        key,
                        day.isoformat(),
                        f"SKU-{rnd.randrange(1000):04d}",
                        f" User{n}@Example.com " if rnd.random() > 0.1 else None,
                        f"+3361234{n % 10000:04d}",
                        rnd.choice(CHANNELS),
                        imp if rnd.random() > 0.01 else -1,  # a few bad rows the filter rule drops
                        rnd.randrange(0, imp + 1) if imp else 0,
                        str(Decimal(rnd.randrange(0, 10_000_000)) / 100),
                        f"{day.isoformat()} {rnd.randrange(24):02d}:{rnd.randrange(60):02d}:00",
                    )
                )
            db.executemany("INSERT INTO campaign_facts VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
        return n


def seed_aws(profile: Profile, dataset: str = "campaign_facts") -> list[SetupStep]:
    """Create the profile's resources as `keyflow setup` does (bucket, key table), then put the demo campaigns."""
    steps = setup_resources(profile)
    keys = resources_for(profile).key_store()
    for key, start, end, enabled in CAMPAIGNS:
        keys.put_key(CampaignKey(dataset, key, start, end, enabled, {"owner": "marketing"}))
    return steps
