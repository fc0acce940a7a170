"""boto3 clients from one session (issue 15): made at once from many threads, each works; the models parse once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.io.aws import client, reset_clients

CALLS = {
    "s3": lambda c: c.list_buckets()["Buckets"],
    "dynamodb": lambda c: c.list_tables()["TableNames"],
    "kms": lambda c: c.list_keys()["Keys"],
}


def test_clients_made_at_once_from_many_threads_each_work(aws_endpoint: str) -> None:
    """Keys and the preflight ask for clients from their own threads: one client per kind, and every call succeeds."""
    reset_clients()
    wanted = [(service, quick) for service in CALLS for quick in (False, True)] * 4

    def use(kind: tuple[str, bool]) -> tuple[tuple[str, bool], int, Any]:
        made = client(kind[0], "us-east-1", aws_endpoint, quick=kind[1])
        return kind, id(made), CALLS[kind[0]](made)

    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(use, wanted))
    assert len({made for _, made, _ in done}) == 6  # one client for each (service, quick), whichever thread came first
    assert all(isinstance(answer, list) for _, _, answer in done)


def test_a_services_model_and_the_endpoint_rules_are_parsed_once_per_process(aws_endpoint: str) -> None:
    """A run's quick and patient S3 clients (and every other service's) share what the session's loader parsed.

    A session per client parsed S3's model and the endpoint rules again for each: ~37 MB and 0.2 CPU-seconds more
    for the five clients of an ETL run (BENCHMARKS.md).
    """
    reset_clients()
    quick, patient = (client("s3", "us-east-1", aws_endpoint, quick=q) for q in (True, False))
    assert quick is not patient
    assert quick.meta.service_model._service_description is patient.meta.service_model._service_description
    assert quick._loader is client("dynamodb", "us-east-1", aws_endpoint)._loader
