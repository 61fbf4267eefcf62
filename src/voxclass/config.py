"""Configuration is plain data: a dataclass per command, filled from YAML and `--key value`."""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import os
import re
import shutil
import textwrap
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """An unknown key or a value of the wrong type, in a YAML file or on the command line."""


def _convert(name: str, value: Any, annotation: Any) -> Any:
    """Coerce a YAML/CLI value to the field's declared type (str, int, float, bool, list, None)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists and (isinstance(value, list) or (isinstance(value, str) and "," in value)):
            return _convert(name, value, lists[0])  # `str | list[str]`: a,b is a list
        return _convert(name, value, args[0])
    if origin is list:
        items = value if isinstance(value, list) else [v.strip() for v in str(value).split(",")]
        items = [v for v in items if v != ""]
        return [_convert(name, v, args[0]) for v in items]
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if annotation in (int, float, str, Path):
            return annotation(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--{name.replace('_', '-')}: {value!r} is not a valid {annotation.__name__}"
        ) from None
    return value


def parse_overrides(args: list[str]) -> dict[str, str]:
    """`['--epochs', '3', '--augment', 'false']` -> {'epochs': '3', 'augment': 'false'}."""
    out, i = {}, 0
    while i < len(args):
        key = args[i]
        if not key.startswith("--"):
            raise ConfigError(f"unexpected argument {key!r}; options look like --key value")
        key = key[2:].replace("-", "_")
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 2
        else:  # a bare flag
            value = "true"
            i += 1
        out[key] = value
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Each field's help: the docstring written under it (base classes' fields included), else
    its `metadata["help"]`, the convention of transformers' dataclasses (HfArgumentParser)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or not klass.__module__.startswith("voxclass"):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:], strict=False):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    for f in dataclasses.fields(cls):
        if f.name not in docs and f.metadata.get("help"):
            docs[f.name] = " ".join(str(f.metadata["help"]).split())
    return docs


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (MISSING when it has none)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def option_name(name: str) -> str:
    """The command-line spelling of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def build_config(
    cls: type[T],
    yaml_file: Path | None,
    values: dict[str, Any],
    option_names: dict[str, str] | None = None,
    passthrough: tuple[str, type] | None = None,
    required: tuple[str, ...] = (),
) -> T:
    """Defaults <- YAML file <- command line; unknown keys are errors that list the known ones,
    and a field without a default that neither gives is an error naming its option
    (`option_names` maps a field to its option where they differ, e.g. source -> --data).

    A field may carry `metadata={"parse": f}`: f turns a text value (command line) into the
    field's value, with its own error message. `passthrough` = (field, dataclass): keys that
    are fields of that other dataclass (and not of `cls`) are collected, converted to their
    types, into the dict `field`; e.g. every transformers.TrainingArguments field for train.
    `required`: fields that must be given although they have a default (positional arguments)."""
    merged: dict[str, Any] = {}
    if yaml_file is not None:
        try:
            loaded = yaml.safe_load(Path(yaml_file).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{yaml_file}: cannot read the config file ({err})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{yaml_file}: expected `key: value` lines, not {loaded!r}")
        merged.update(loaded)
    merged.update({k: v for k, v in values.items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    if passthrough is not None:
        into, other = passthrough
        other_hints = {f.name: f.type for f in dataclasses.fields(other)}
        extra = dict(merged.get(into) or {})
        for key in [k for k in merged if k not in fields and k in other_hints]:
            extra[key] = merged.pop(key)
        for key, value in extra.items():
            if key not in other_hints:
                raise ConfigError(f"{into}: {key!r} is not a field of {other.__name__}")
            hint = other_hints[key]
            text = isinstance(value, str) and "," not in value
            if text and str in (hint, *typing.get_args(hint)):
                continue  # its own class reads text (report_to: "none" is not None)
            extra[key] = _convert(key, value, hint if not isinstance(hint, str) else Any)
        merged[into] = extra
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        close = {c for u in unknown for c in difflib.get_close_matches(u, fields, n=1)}
        also = f" and every {passthrough[1].__name__} field" if passthrough else ""
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}{also}"
            + (f"; did you mean {', '.join(sorted(close))}?" if close else "")
        )
    for f in fields.values():
        needed = f.name in required or field_default(f) is dataclasses.MISSING
        if needed and merged.get(f.name) is None:
            option = (option_names or {}).get(f.name, option_name(f.name))
            raise ConfigError(
                f"{option} is required (on the command line or as `{f.name}:` in --config)"
            )
    converted = {}
    for key, value in merged.items():
        parse: Callable | None = fields[key].metadata.get("parse")
        if parse is not None and isinstance(value, str):
            converted[key] = parse(value)
        else:
            converted[key] = _convert(key, value, hints[key])
    return cls(**converted)


def check_output_file(path: Path, option: str) -> None:
    """ConfigError naming `option` unless `path` can be written as a file: its folder exists
    and it is not itself a folder. Checked before the work, so no result is lost at the end."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name inside it")
    if not path.parent.is_dir():
        raise ConfigError(
            f"{option} {path}: folder {path.parent} does not exist; create it or choose another"
        )


def honour_umask(root: Path) -> None:
    """Give a finished output folder the modes the user's umask asks for (0755 folders and
    0644 files under the usual 022): temp folders (0700) and safetensors files (0600) are
    created private, and would otherwise stay unreadable to the rest of a team."""
    mask = os.umask(0)
    os.umask(mask)
    root.chmod(0o777 & ~mask)
    for path in root.rglob("*"):
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write via a temp file and rename, so a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


# While an output folder is written, its temp folders sit beside it: `.NAME.voxclass-new-PID`
# (the new output) and `.NAME.voxclass-old-PID` (the earlier one, removed once the new one is
# in place). Names carry the writer's PID so a later run can tell a dead writer's from a live one's.
LEFTOVER = re.compile(r"\.(?P<name>.+)\.voxclass-(?P<kind>new|old)-(?P<pid>\d+)")


def staging_folder(out: Path) -> Path:
    """An empty temp folder beside OUT to build a new output in; give it to `publish_folder`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.voxclass-new-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` (from `staging_folder`) at OUT, so no reader ever sees a
    half-written output: modes as the umask asks, an earlier OUT moved aside first and removed
    only once the new one is in place; a failure in between puts the earlier one back. The
    caller has checked that OUT may be replaced."""
    old = out.parent / f".{out.name}.voxclass-old-{os.getpid()}"
    honour_umask(tmp)
    try:
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted_write(out: Path) -> None:
    """Clean up after a writer of OUT killed mid-write: its half-written new output is
    removed; an earlier output it had moved aside is put back if OUT is missing (killed
    between the two renames), else removed. Temp folders of a live writer are left alone."""
    if not out.parent.is_dir():
        return
    for path in sorted(out.parent.glob(f".{out.name}.voxclass-*")):
        match = LEFTOVER.fullmatch(path.name)
        if not match or match["name"] != out.name or _pid_alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and not out.exists():
            path.rename(out)
        else:
            shutil.rmtree(path)


def save_config(config: Any, path: Path) -> None:
    """Write the effective configuration as YAML (beside every output)."""
    data = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    write_atomic(path, yaml.safe_dump(data, sort_keys=False))
