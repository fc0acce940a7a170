"""Load and validate keyflow YAML. Every problem is one line naming the file and the field path."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from config.errors import ConfigError, clip
from config.models import (
    ENV_PREFIX,
    DatasetConfig,
    EventsConfig,
    FileSourceConfig,
    Profile,
    ProfileEnvSource,
    TrendConfig,
)

M = TypeVar("M", bound=BaseModel)
MAX_YAML_BYTES = 1_000_000


def config_dir() -> Path:
    """The folder holding ``datasets/`` and ``profiles/``: ``$KEYFLOW_CONFIG_DIR`` or the packaged one."""
    env = os.environ.get(ENV_PREFIX + "CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent


def display_path(path: Path) -> str:
    """A path as a user would type it: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and aliases (no anchor bombs, no silent overwrites)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(None, None, "aliases (*name) are not allowed in keyflow YAML", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _StrictLoader.construct_mapping,
)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS refuses (too long, a NUL byte) instead of raising."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_yaml(path: Path) -> Any:
    """Parse one YAML file strictly; raise :class:`ConfigError` naming the file and line."""
    shown = clip(display_path(path))
    if not _is_file(path):
        raise ConfigError(f"{shown}: {'not a file' if path.is_dir() else 'no such file'}")
    raw = path.read_bytes()
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{shown}: file is {len(raw)} bytes; keyflow YAML is at most {MAX_YAML_BYTES}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{shown}: {where}{what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{shown}: {exc}") from None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and ("[" in part or "-" in part and part.startswith("function")):
            continue  # pydantic's internal validator names, not the user's path
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def format_errors(shown: str, exc: ValidationError, env_fields: Mapping[str, str] | None = None) -> list[str]:
    """One ``file: path: message`` line per pydantic error."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = _loc(tuple(err["loc"]))
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        origin = ""
        if env_fields and err["loc"] and str(err["loc"][0]) in env_fields:
            origin = f" (from ${env_fields[str(err['loc'][0])]})"
        lines.append(f"{shown}: {loc}: {msg}{origin}")
    return lines


def _validate(model: type[M], data: Any, shown: str, env_fields: Mapping[str, str] | None = None) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{shown}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(shown, exc, env_fields)) from None


def _resolve(kind: str, name_or_path: str | Path) -> Path:
    """A path as given (``.yaml``/``.yml``, or an existing file), else ``config/<kind>/<name>.yaml``.

    Raises:
        ConfigError: a name with no file behind it, naming the file looked for and the names there are.
    """
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or _is_file(p):
        return p
    folder = config_dir() / kind
    path = folder / f"{name_or_path}.yaml"
    if not _is_file(path):
        known = sorted(f.stem for f in folder.glob("*.yaml"))
        raise ConfigError(f"{clip(display_path(path))}: no such file (known {kind}: {', '.join(known) or 'none'})")
    return path


F = TypeVar("F", DatasetConfig, TrendConfig, EventsConfig, FileSourceConfig)


def _load_job(kind: str, model: type[F], name_or_path: str | Path) -> F:
    """Load ``config/<kind>/<name>.yaml`` (or a path) into ``model``, remembering the file for error messages."""
    path = _resolve(kind, name_or_path)
    job = _validate(model, read_yaml(path), display_path(path))
    job._file = display_path(path)
    return job


def load_dataset(name_or_path: str | Path) -> DatasetConfig:
    """Load ``config/datasets/<name>.yaml`` (or a path) into a :class:`DatasetConfig`."""
    return _load_job("datasets", DatasetConfig, name_or_path)


def load_trends(name_or_path: str | Path) -> TrendConfig:
    """Load ``config/trends/<name>.yaml`` (or a path) into a :class:`TrendConfig`."""
    return _load_job("trends", TrendConfig, name_or_path)


def load_events(name_or_path: str | Path) -> EventsConfig:
    """Load ``config/events/<name>.yaml`` (or a path) into an :class:`EventsConfig`."""
    return _load_job("events", EventsConfig, name_or_path)


def load_file_source(name_or_path: str | Path) -> FileSourceConfig:
    """Load ``config/sources/<name>.yaml`` (or a path) into a :class:`FileSourceConfig`."""
    return _load_job("sources", FileSourceConfig, name_or_path)


def load_profile(name_or_path: str | Path, environ: Mapping[str, str] | None = None) -> Profile:
    """Load ``config/profiles/<name>.yaml``; ``KEYFLOW_<FIELD>`` variables (of ``environ``, read now) win over it."""
    path = _resolve("profiles", name_or_path)
    data = read_yaml(path)
    overrides = ProfileEnvSource(Profile, environ)()
    if isinstance(data, dict):
        data = {**data, **overrides}
    profile = _validate(Profile, data, display_path(path), {name: ENV_PREFIX + name.upper() for name in overrides})
    profile._file = display_path(path)
    return profile


def validate_tree(root: Path | None = None) -> tuple[int, list[str]]:
    """Validate every YAML in the datasets/, profiles/, trends/, events/ and sources/ folders below ``root``.

    Returns:
        (files checked, one line per problem).

    Raises:
        ConfigError: ``root`` is not a folder, or holds no keyflow YAML at all (a mistyped ``--config-dir`` must not
            pass for "0 file(s) valid").
    """
    base = root or config_dir()
    loaders: tuple[tuple[str, Any], ...] = (
        ("datasets", load_dataset),
        ("profiles", load_profile),
        ("trends", load_trends),
        ("events", load_events),
        ("sources", load_file_source),
    )
    shown = clip(display_path(base))
    if not base.exists():
        raise ConfigError(f"{shown}: no such folder")
    if not base.is_dir():
        raise ConfigError(f"{shown}: not a folder")
    if not any(next((base / kind).glob("*.y*ml"), None) for kind, _ in loaders):
        raise ConfigError(f"{shown}: no keyflow YAML in {', '.join(kind + '/' for kind, _ in loaders)}")
    problems: list[str] = []
    checked = 0
    for kind, loader in loaders:
        for path in sorted((base / kind).glob("*.y*ml")):
            checked += 1
            try:
                if kind == "profiles":
                    load_profile(path, environ={})
                else:
                    loader(path)
            except ConfigError as exc:
                problems.extend(exc.problems)
    return checked, problems
