"""Settings objects from a YAML file plus command-line flags, with one error formatter.

Every stage takes one pydantic settings object; the CLI only builds it:

- `add_settings_arguments(parser, Model, key=...)` adds one flag per field of `Model`, generated from the
  field: the help is the field's description (and its default), `Literal` fields get `choices`, `bool` fields
  get `--x/--no-x`, `list[...]` fields are repeatable, and nested models give dashed flags (`--judge-kind`).
  A flag that is not given leaves no value behind, so only what the user typed overrides the file.
- `settings_overrides(args, key)` reads those flags back as a nested mapping of field values.
- `load_settings(Model, path, overrides)` reads the optional YAML file, applies the overrides on top and
  validates; a bad value raises `SamiInputError` with one line naming the file (or the flags) and the field.
- `describe_validation_error(error)` is that one line, used by every module that validates a pydantic model.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, Discriminator, Tag, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, PydanticUndefined

from sami.errors import SamiInputError
from sami.io import read_text

M = TypeVar("M", bound=BaseModel)
# an environment variable's name: the pattern of every `api_key_env` field (a pasted key fails it, and the error
# never echoes it: `describe_error` hides values of fields named *key* or *token*)
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"

_EXPECTED = {
    "float_parsing": "a number",
    "float_type": "a number",
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
}


# ---- unions of settings classes (one per backend or kind) --------------------------------------------
_TAGS: dict[str, type[BaseModel]] = {}  # every union member by its tag (for error locations)


def settings_union(key: str, default: str, members: dict[str, type[BaseModel]], fills: dict[str, dict] | None = None):
    """A union of settings classes chosen by the field `key` (e.g. `backend`), as a field type: the tag is the
    value of `key` in a mapping or an object, `default` when not given; `fills` (e.g. a judge's presets by name,
    read from the field `preset`) may supply it. Its fields stay flat (`generation.batch_size`)."""

    def tag(value: Any) -> str:  # renamed to `key` below: pydantic names it in errors
        if isinstance(value, dict):
            given = value.get(key)
            if given is None and fills and value.get("preset") in fills:
                given = fills[value["preset"]].get(key)
            return given if given is not None else default
        return getattr(value, key, default)

    tag.__name__ = key
    _TAGS.update(members)
    options = tuple(Annotated[member, Tag(name)] for name, member in members.items())
    return Annotated[Union[options], Discriminator(tag)]  # noqa: UP007 - built from a tuple


def _strip_tags(loc: tuple) -> list[str]:
    """An error location without the union tags pydantic puts in it (`generation.hf.batch_size` ->
    `generation.batch_size`): a tag followed by a field of its member, or last."""
    parts = [str(p) for p in loc]
    return [
        p
        for i, p in enumerate(parts)
        if not (p in _TAGS and (i + 1 == len(parts) or parts[i + 1] in _TAGS[p].model_fields))
    ]


def refuse_foreign_fields(cls: type[BaseModel], data: Any, key: str, members: dict[str, type[BaseModel]]) -> Any:
    """`data` when every key of it is a field of `cls` (the member of a union chosen by `key`); else the first
    other key as an error naming it: a field of another member (`batch_size` under `backend: openai`) or an
    unknown key. A field of another member at that member's default is dropped: it changes nothing, and the
    resolved configs written before the union (`sami config`, a run's config.yaml) hold every field."""
    if not isinstance(data, dict):
        return data
    mine = cls.model_fields
    kept = {}
    for name, value in data.items():
        if name in mine:
            kept[name] = value
            continue
        owners = [tag for tag, member in members.items() if name in member.model_fields]
        tag = next((t for t, m in members.items() if m is cls), "?")
        defaults = [members[o].model_fields[name].get_default(call_default_factory=True) for o in owners]
        if owners and all(value == d for d in defaults):
            continue
        if owners:
            raise PydanticCustomError(
                "foreign_field",
                "{field}: a setting of {key} {owners} only, not of {key} {tag}",
                {"field": name, "key": key, "owners": "/".join(owners), "tag": tag},
            )
        raise PydanticCustomError("unknown_field", "{field}: unknown key", {"field": name, "tag": tag})
    return kept


def shown_tag(err: dict) -> str:
    return json.dumps(err["ctx"]["tag"], default=str)


def describe_error(err: dict) -> str:
    """One pydantic error (an item of `ValidationError.errors()`) as `field.path: what is wrong`."""
    parts = _strip_tags(err["loc"])
    loc = ".".join(parts) or "(top level)"
    kind = err["type"]
    if kind in ("foreign_field", "unknown_field"):  # raised by refuse_foreign_fields, at the member's level
        message = err["msg"].split(": ", 1)[1]
        return ".".join([*parts, err["ctx"]["field"]]) + f": {message}"
    got = err.get("input")
    shown = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
    if any("key" in str(part).lower() or "token" in str(part).lower() for part in err["loc"]):
        shown = "a value not shown (it may be a secret)"  # e.g. a key pasted into api_key_env
    if kind == "string_pattern_mismatch" and shown.startswith("a value not shown"):
        return f"{loc}: expected the name of an environment variable (letters, digits, _), got {shown}"
    if kind == "extra_forbidden":
        return f"{loc}: unknown key"
    if kind == "union_tag_invalid":  # a settings_union's key (backend, kind) names no member
        key = str(err["ctx"]["discriminator"]).strip("'").removesuffix("()")
        return f"{'.'.join([*parts, key])}: expected one of {err['ctx']['expected_tags']}, got {shown_tag(err)}"
    if kind == "missing":
        return f"{loc}: required field is missing"
    expected = _EXPECTED.get(kind)
    if expected:
        return f"{loc}: expected {expected}, got {shown}"
    message = err["msg"].removeprefix("Value error, ")
    return f"{loc}: {message} (got {shown})"


def describe_validation_error(error: ValidationError, source: str | None = None) -> str:
    """The first error of `error` as one line, prefixed by `source` (a file or 'flags'), counting the rest."""
    errors = error.errors()
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    line = f"{describe_error(errors[0])}{more}"
    return f"{source}: {line}" if source else line


def validate(model: type[M] | Any, raw: Any, *, source: str | None = None) -> M:
    """`model.model_validate(raw)` (`model` may also be a union of settings classes, e.g. `GenerationSettings`),
    raising `SamiInputError` (one line, naming `source` and the field)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        name = getattr(model, "__name__", "settings")
        raise SamiInputError(f"{source or name}: expected a mapping, got {type(raw).__name__}")
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(raw)
        return TypeAdapter(model).validate_python(raw)
    except ValidationError as e:
        raise SamiInputError(describe_validation_error(e, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a mapping holding the same key twice (YAML says keys are unique; PyYAML
    keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.setdefault(key, line)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if first != line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} given twice (lines {first} and {line})", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """`yaml.safe_load`, refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping ({} for an empty file); `SamiInputError` naming the file otherwise (also for
    bytes that are not UTF-8 and for a key given twice)."""
    path = Path(path)
    if not path.is_file():
        raise SamiInputError(f"{path}: file not found")
    try:
        raw = load_yaml_text(read_text(path))
    except OSError as e:
        raise SamiInputError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SamiInputError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SamiInputError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` on top; nested mappings are merged key by key (a new dict, inputs untouched)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    model: type[M], path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, source: str = "flags"
) -> M:
    """A `model` from the YAML file at `path` (optional) with `overrides` (e.g. `settings_overrides`) on top.

    Errors name the file when there is one, else `source`."""
    raw = read_yaml(path) if path is not None else {}
    return validate(model, merge(raw, overrides or {}), source=str(path) if path is not None else source)


# ---- flags from fields -------------------------------------------------------------------------------
def union_members(annotation: Any) -> list[type[BaseModel]] | None:
    """The settings classes of a union of them (`GenerationSettings`, `JudgeSettings`; `Annotated` and None
    stripped), else None."""
    if get_origin(annotation) is Annotated:
        return union_members(get_args(annotation)[0])
    if get_origin(annotation) not in (Union, types.UnionType):
        return None
    options = [get_args(a)[0] if get_origin(a) is Annotated else a for a in get_args(annotation)]
    options = [a for a in options if a is not type(None)]
    if len(options) > 1 and all(isinstance(a, type) and issubclass(a, BaseModel) for a in options):
        return options
    return None


def settings_fields(model: Any) -> dict[str, FieldInfo]:
    """The fields of a settings class, or of every member of a union of them (first declaration wins; a `Literal`
    field such as the union's `backend` gets every member's choices)."""
    members = union_members(model)
    if members is None:
        return dict(model.model_fields)
    out: dict[str, FieldInfo] = {}
    for member in members:
        for name, info in member.model_fields.items():
            have = out.get(name)
            if have is None:
                out[name] = info
            elif get_origin(have.annotation) is Literal and get_origin(info.annotation) is Literal:
                choices = [*get_args(have.annotation), *get_args(info.annotation)]
                merged = copy.copy(have)
                merged.annotation = Literal[tuple(dict.fromkeys(choices))]  # type: ignore[valid-type]
                out[name] = merged
    return out


def _flag_kind(annotation: Any) -> tuple[str, Any] | None:
    """How a field type becomes a flag: ("model", cls or union), ("bool", None), ("choices", values), ("list",
    item type), ("value", type); None when it cannot be given on a command line (mappings, ...)."""
    if union_members(annotation) is not None:
        return "model", annotation
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _flag_kind(options[0])
        return ("value", str) if str in options else None
    if origin is Literal:
        return "choices", list(get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation) or (str,)
        return ("list", item) if item in (str, int, float) else None
    if annotation is bool:
        return "bool", None
    if annotation in (int, float, str):
        return "value", annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "model", annotation
    return None


def _help(description: str | None, default: Any) -> str:
    text = description or ""
    if default is not PydanticUndefined and default is not None and default != [] and default != {}:
        text = f"{text} (default: {default})" if text else f"default: {default}"
    return text.replace("%", "%%")


def add_settings_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    key: str,
    fields: list[str] | None = None,
    exclude: tuple[str, ...] = (),
    flags: dict[str, list[str]] | None = None,
    prefix: str = "",
) -> None:
    """Add one flag per field of `model` (only `fields` when given, none of `exclude`).

    Flags are `--field-name` (nested models: `--section-field-name`); `flags` gives other spellings by dotted
    field path (`{"judge.kind": ["--judge"]}`). Values land in `args` under `"{key}.{dotted path}"` and only
    when given; `settings_overrides(args, key)` collects them."""
    flags = flags or {}
    for name, info in settings_fields(model).items():
        dotted = f"{prefix}{name}"
        if (fields is not None and name not in fields) or name in exclude or dotted in exclude:
            continue
        kind = _flag_kind(info.annotation)
        if kind is None:
            continue
        what, arg = kind
        if what == "model":
            add_settings_arguments(parser, arg, key=key, exclude=exclude, flags=flags, prefix=f"{dotted}.")
            continue
        names = flags.get(dotted) or ["--" + dotted.replace(".", "-").replace("_", "-")]
        options: dict[str, Any] = {
            "dest": f"{key}.{dotted}",
            "default": argparse.SUPPRESS,
            "help": _help(info.description, info.default),  # a default_factory is not shown
        }
        if what == "bool":
            options["action"] = argparse.BooleanOptionalAction
        elif what == "choices":
            options["choices"] = arg
            options["type"] = type(arg[0])
        elif what == "list":
            options["action"] = "append"
            options["type"] = arg
        else:
            options["type"] = arg
        if what in ("list", "value"):
            options["metavar"] = names[0].lstrip("-").upper().replace("-", "_")
        parser.add_argument(*names, **options)


def settings_overrides(args: argparse.Namespace, key: str) -> dict[str, Any]:
    """The field values given on the command line for the flags added with `key`, as a nested mapping."""
    out: dict[str, Any] = {}
    start = f"{key}."
    for dest, value in vars(args).items():
        if not dest.startswith(start):
            continue
        *parents, leaf = dest[len(start) :].split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out
