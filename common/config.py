"""Typed job configs: one dataclass maps onto CLI flags, a YAML file and `key=value` overrides.

Every job and the trainer parse their configuration through `parse_config`, so an unknown key,
a wrong type or a missing required value is one clear line before any work starts.

Precedence, lowest first: the dataclass defaults, a profile (a YAML file the job ships, e.g.
`--quick`), `--config FILE.yaml`, `--flag value`, `key=value`. A value the user gives is never
overwritten; the resulting config is frozen.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import shutil
import sys
import textwrap
import tokenize
import types
import typing
from typing import Any, TypeVar

import yaml

from common import logs

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or invalid."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's declared type."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind, origin = options[0], typing.get_origin(options[0])
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return build_config(kind, value, prefix=f"{name}.")
    if origin in (tuple, list):
        items = value.split(",") if isinstance(value, str) else list(value)
        item_kind = typing.get_args(kind)[0] if typing.get_args(kind) else str
        items = [_coerce(name, item_kind, v.strip() if isinstance(v, str) else v) for v in items if v != ""]
        return tuple(items) if origin is tuple else items
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind in (int, float, str):
        try:
            return kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None
    return value


def build_config(cls: type[T], values: dict[str, Any], prefix: str = "") -> T:
    """Build `cls` from a nested dict; unknown keys and missing required fields are errors."""
    kinds = _field_types(cls)
    unknown = sorted(set(values) - set(kinds))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (valid: {', '.join(sorted(kinds))})")
    kwargs = {k: _coerce(prefix + k, kinds[k], v) for k, v in values.items()}
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config value {prefix}{missing[0]}")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a component's own check in __post_init__: same one-line error
        raise ConfigError(f"{prefix}{e}" if prefix else str(e)) from None


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, section by section: a nested mapping merges, any other value replaces."""
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def _read_yaml(path: str) -> dict:
    try:
        with open(path) as fh:
            values = yaml.safe_load(fh) or {}
    except OSError as e:
        raise ConfigError(f"config file {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return values


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[leaf] = value


@functools.cache
def _line_comments(cls: type) -> dict[str, str]:
    """Each field's comment on its own line (`name: int = 3  # what it is`): the help of fields that
    carry no `help` metadata, so the text a reader of the code sees is the text `--help` shows."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # no source (a frozen build): help shows defaults only
        return {}
    comments, names = {}, set(_field_types(cls))
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            line = token.line
            name = line.split(":", 1)[0].strip()
            if name in names and not line.lstrip().startswith("#"):
                comments[name] = token.string.lstrip("#").strip()
    return comments


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _shown(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if isinstance(value, (tuple, list)):
        return "default: " + (",".join(map(str, value)) or "empty")
    return f"default: {value!r}" if value == "" else f"default: {value}"


def _help(cls: type, f: dataclasses.Field) -> str:
    text = f.metadata.get("help") or _line_comments(cls).get(f.name, "")
    return f"{text} ({_shown(_default(f))})" if text else f"({_shown(_default(f))})"


def _nested_keys(cls: type, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted key, help) for every field under a section (a dataclass-typed field), depth first."""
    keys = []
    for f in dataclasses.fields(cls):
        kind = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            keys += _nested_keys(kind, f"{prefix}{f.name}.")
        elif prefix:
            keys.append((prefix + f.name, _help(cls, f)))
    return keys


def _log_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--log-level", choices=logs.LEVELS, default="info", type=str.lower,
                        help="the job's own lines from this level; other libraries' (Ray, open_clip) from "
                             "warning, all of them at debug (default: info)")
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake on the command line in one line (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (--help lists every flag)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's layout, with the epilog (the sections' keys) kept as laid out."""

    def _fill_text(self, text, width, indent):
        if text.startswith(_SECTIONS_HEADING):
            return text
        return super()._fill_text(text, width, indent)


_SECTIONS_HEADING = "keys in sections"


def _sections_epilog(cls: type) -> str | None:
    keys = _nested_keys(cls)
    if not keys:
        return None
    column = min(max(len(k) for k, _ in keys) + 4, 36)
    width = max(shutil.get_terminal_size().columns - 2, column + 40)  # as argparse wraps the flags' help
    lines = [f"{_SECTIONS_HEADING} (give them as section.key=value, or under section: in --config YAML):"]
    for key, text in keys:
        wrapped = textwrap.wrap(text, width - column) or [""]
        first = f"  {key}".ljust(column) if len(key) + 4 <= column else f"  {key}\n" + " " * column
        lines.append(first + wrapped[0])
        lines += [" " * column + more for more in wrapped[1:]]
    return "\n".join(lines)


def _own_fields_first(cls: type) -> list[dataclasses.Field]:
    """A job's own settings lead its --help; those it shares with other jobs (a base class) follow."""
    own = inspect.get_annotations(cls)
    return sorted(dataclasses.fields(cls), key=lambda f: f.name not in own)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str = "",
                 profiles: dict[str, str] | None = None) -> T:
    """Parse `--config FILE.yaml`, `--flag value` for top-level fields and `key.sub=value` overrides.

    profiles: name -> YAML file; `--profile NAME` (or `--NAME`) lays its values under the user's.
    `--help` lists every key with its default (or "required"); `--print-config` prints the config the
    job would run with, as YAML `--config` reads, and exits.
    """
    parser = _Parser(description=description, allow_abbrev=False, parents=[_log_level_parser()],
                     formatter_class=_HelpFormatter, epilog=_sections_epilog(cls))
    parser.add_argument("--config", help="YAML file with any of the keys here")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (what --config reads) and exit")
    for name, path in (profiles or {}).items():
        parser.add_argument(f"--{name}", dest="profile", action="store_const", const=name,
                            help=f"the {name} profile ({path}); values you give win over it")
    if profiles:
        parser.add_argument("--profile", choices=sorted(profiles), help="a profile by name")
    for f in _own_fields_first(cls):
        kind = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            continue
        # a bare `--flag` means true for booleans; `--flag false` still works
        extra = {"nargs": "?", "const": "true"} if kind is bool else {}
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                            help=_help(cls, f).replace("%", "%%"), **extra)
        # img2dataset's spellings (`--url_col`, `--output_folder`) reach the same field, unlisted in --help
        for alias in {f.name, *f.metadata.get("aliases", ())} - {f.name.replace("_", "-")}:
            parser.add_argument("--" + alias, dest=f.name, default=None, help=argparse.SUPPRESS, **extra)
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    args = parser.parse_args(argv)
    values: dict[str, Any] = _read_yaml(profiles[args.profile]) if getattr(args, "profile", None) else {}
    if args.config:
        values = _merge(values, _read_yaml(args.config))
    for f in dataclasses.fields(cls):
        flag = getattr(args, f.name, None)
        if flag is not None:
            values[f.name] = flag
    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        _set_dotted(values, key, yaml.safe_load(value) if value else "")
    config = build_config(cls, values)
    if args.print_config:
        print(yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False), end="")
        sys.exit(0)
    return config


def _plain(value: Any) -> Any:
    """Tuples as lists: YAML `--config` reads back what `--print-config` writes."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def job_config(cls: type[T], argv: list[str] | None, doc: str, profiles: dict[str, str] | None = None) -> T | None:
    """A job's start: logging on, then its config from the command line; None (after one line on
    stderr) when the config is wrong, so `main` returns exit status 2 before any work starts."""
    known, _ = _log_level_parser().parse_known_args(argv)
    logs.configure(known.log_level)
    try:
        return parse_config(cls, argv, description=" ".join(doc.split("\n\n")[0].split()), profiles=profiles)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
