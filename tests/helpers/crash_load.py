"""Stage one key and submit its load through the Data API in this process, then die with os._exit as a killed worker
would: after the statement id is in the ledger, before its outcome is known.

python -m tests.helpers.crash_load DATASET PROFILE KEY RUN_DATE
"""

from __future__ import annotations

import datetime as dt
import os
import sys

from config.loader import load_dataset, load_profile
from tasks.etl import stage_rows
from tasks.io.redshift import DataApi
from tasks.resources import resources_for
from tasks.transforms.plan import plan_table


def main() -> None:
    dataset_path, profile_path, key, day = sys.argv[1:5]
    dataset, profile = load_dataset(dataset_path), load_profile(profile_path, environ={})
    run_date = dt.date.fromisoformat(day)
    resources = resources_for(profile)
    spec = plan_table(dataset, resources.source().source_schema(dataset.source), dataset.file)
    warehouse = resources.warehouse()
    warehouse.prepare(spec)
    (campaign,) = [k for k in resources.key_store().active_keys(dataset.name, run_date) if k.key == key]
    staged = stage_rows(campaign, dataset, resources, spec, "crashed-run", run_date)
    DataApi.wait = lambda self, statement_id, what: os._exit(17)  # type: ignore[method-assign,assignment]
    warehouse.load_key(spec, staged, resources.object_store())
    os._exit(0)


if __name__ == "__main__":
    main()
