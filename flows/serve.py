"""`keyflow serve`: every deployment of ``deployments/prefect.yaml`` served from one long-running process."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from config.errors import ConfigError
from config.loader import display_path, read_yaml


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """``flows/rds_to_redshift.py:rds_to_redshift`` → the flow object."""
    path, _, name = entrypoint.partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name, None)
    if not isinstance(flow, Flow):
        raise ConfigError(f"entrypoint {entrypoint!r} is not a flow")
    return flow


def deployment_specs(path: Path) -> list[dict[str, Any]]:
    """The deployments declared in a prefect.yaml, checked: entrypoints import, parameters fit the flow."""
    shown = display_path(path)
    data = read_yaml(path)
    specs = data.get("deployments") if isinstance(data, dict) else None
    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{shown}: deployments: expected a non-empty list")
    for i, spec in enumerate(specs):
        entrypoint = spec.get("entrypoint") if isinstance(spec, dict) else None
        if not isinstance(entrypoint, str) or ":" not in entrypoint:
            raise ConfigError(f"{shown}: deployments[{i}].entrypoint: expected path/to/file.py:flow_function")
        try:
            flow = load_flow(entrypoint)
        except ImportError as exc:
            raise ConfigError(f"{shown}: deployments[{i}].entrypoint: cannot import {entrypoint!r}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"{shown}: deployments[{i}].entrypoint: {exc}") from None
        try:
            flow.validate_parameters(spec.get("parameters") or {})
        except Exception as exc:
            raise ConfigError(f"{shown}: deployments[{i}].parameters: {exc}") from None
    return specs


def _schedules(spec: dict[str, Any]) -> list[Any]:
    out: list[Any] = []
    for s in spec.get("schedules") or []:
        if "cron" in s:
            out.append(CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")))
        elif "interval" in s:
            out.append(IntervalSchedule(interval=s["interval"]))
    return out


def serve_all(path: Path, names: list[str] | None = None) -> None:
    """Serve the deployments (all, or those named) with their schedules until interrupted.

    Refused, touching nothing, when one of them exists in a work pool (see :func:`in_work_pools`): ``serve``
    changes and pauses only deployments it serves.
    """
    deployments: list[Any] = []
    for spec in deployment_specs(path):
        if names and spec["name"] not in names:
            continue
        limit = spec.get("concurrency_limit")
        deployments.append(
            load_flow(spec["entrypoint"]).to_deployment(
                name=spec["name"],
                schedules=_schedules(spec),
                parameters=spec.get("parameters") or {},
                tags=spec.get("tags") or [],
                description=spec.get("description"),
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=limit["limit"], collision_strategy=ConcurrencyLimitStrategy(limit["collision_strategy"])
                )
                if isinstance(limit, dict)
                else limit,
            )
        )
    if not deployments:
        raise ConfigError(f"{display_path(path)}: no deployment named {', '.join(names or [])}")
    if taken := in_work_pools(deployments):
        raise ConfigError(
            [
                f"{display_path(path)}: deployment {name!r} exists in work pool {pool!r}: serving it would take it "
                "from the pool's workers and pause its schedule when `keyflow serve` stops; leave it out (--name) "
                "or rename it in the file"
                for name, pool in taken
            ]
        )
    # Served runs are this process's children: they send heartbeats as the work-pool deployments do, so the zombie
    # automation (deployments/automations.yaml) crashes a run whose host died.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    serve(*deployments)


def in_work_pools(deployments: list[Any]) -> list[tuple[str, str]]:
    """(flow/deployment name, work pool) of each deployment to serve that already exists in a work pool.

    A served deployment is the same object as a deployed one of the same flow and name: serving it would move it
    out of its pool, and Prefect's ``serve`` pauses every deployment it served when it stops.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    taken = []
    with get_client(sync_client=True) as client:
        for deployment in deployments:
            try:
                existing = client.read_deployment_by_name(deployment.full_name)
            except ObjectNotFound:
                continue
            if existing.work_pool_name:
                taken.append((deployment.full_name, existing.work_pool_name))
    return taken
