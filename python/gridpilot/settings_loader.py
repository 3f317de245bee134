"""One loader for every settings dataclass: a YAML file, then environment variables, then command-line flags.

A settings class declares each field with `setting(...)`: its default, what it is for and its bounds; a `Schema`
says how the class is loaded. docs/configuration.md is written from the declarations and from the rules below
(tools/configuration_docs.py). `load` applies the same rules to every class:

- Each layer overrides the one before: the file, then `<prefix><NAME>` variables (a class with an `env_prefix`),
  then the flags. A field may instead take its *default* from a variable (`env_default`): the file and flags
  override that one.
- Types: a bool is true/false, yes/no, on/off or 1/0; an int or float is a number (a bool is not); a str is any
  scalar; an optional field is unset by null, or by the text "", "none" or "null" (any case).
- A list of strings may be a YAML list or one string split on the field's separators (`split`): names on commas
  or whitespace (the pilot split on commas and the CE on whitespace; both still work), paths on commas only (a path
  may hold a space), command-line words on whitespace only (an argument may hold a comma).
- Every error is a ConfigError that starts with where the value came from ("file:line", "environment variable X",
  "option --x"; "default" for a default) and names the field; an item of a list or a key of a mapping is located at
  its own line.

Two messages kept the words each loader had, since operators match on them: an int field "must be an integer"
(the pilot) or "a whole number" (the CE), and a lower bound "must be >= n" or "at least n" (`Schema.words`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, get_type_hints

from gridpilot.errors import ConfigError

#: The separators a list field given as one string is split on.
NAMES = "names"  # commas or whitespace
PATHS = "paths"  # commas
WORDS = "words"  # whitespace
_SPLITTERS = {NAMES: re.compile(r"[,\s]+"), PATHS: re.compile(r"\s*,\s*"), WORDS: re.compile(r"\s+")}
_SPLIT_WORDS = {NAMES: "comma- or space-separated", PATHS: "comma-separated", WORDS: "space-separated"}

_NONE_TEXTS = ("", "none", "null")
_TRUE_TEXTS = ("1", "true", "yes", "on")
_FALSE_TEXTS = ("0", "false", "no", "off")

#: Where each item of a list field, or each key of a mapping field, was written: {index or key: "file:line"}.
Parts = Dict[Union[int, str], str]


@dataclass(frozen=True)
class Rules:
    """What a field declares beyond its type and default."""

    doc: str
    #: Bounds of a number: at least `minimum`, more than `above`, at most `maximum`.
    minimum: Optional[float] = None
    above: Optional[float] = None
    maximum: Optional[float] = None
    #: What 0 (or the bound) means, said with the bound: "0: no limit".
    note: str = ""
    #: The values a string field may take.
    choices: Tuple[str, ...] = ()
    #: How a list of strings given as one string is split (NAMES, PATHS, WORDS).
    split: str = NAMES
    #: A list of mappings: the keys each item may have.
    keys: Tuple[str, ...] = ()
    #: A variable whose value is the default (the file and the flags override it).
    env_default: Optional[str] = None
    #: The default as the documentation says it, where it depends on the host (its name, TMPDIR, ...).
    default_doc: Optional[str] = None


def setting(default: Any = dataclasses.MISSING, *, factory: Optional[Callable[[], Any]] = None, doc: str,
            **rules: Any) -> Any:
    """A dataclass field with its rules (see Rules) in its metadata."""
    meta = {"rules": Rules(doc=doc, **rules)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Words:
    integer: str = "an integer"
    at_least: str = ">= {bound}"


@dataclass(frozen=True)
class Schema:
    """A settings dataclass and how it is loaded."""

    cls: type
    #: "configuration", "CE configuration": in "cannot read the ...".
    what: str
    #: Every field `<name>` may be set by the variable `<env_prefix><NAME>`; None: no environment layer.
    env_prefix: Optional[str] = None
    #: The variable naming the file when none is given.
    file_env: Optional[str] = None
    words: Words = Words()

    def fields(self) -> Dict[str, dataclasses.Field]:
        return self._fields

    def rules(self, name: str) -> Rules:
        return self._fields[name].metadata["rules"]

    def types(self) -> Dict[str, Any]:
        return self._types

    # Worked out once per schema (a cached_property writes the instance's __dict__, which a frozen dataclass allows).
    @functools.cached_property
    def _fields(self) -> Dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(self.cls)}

    @functools.cached_property
    def _types(self) -> Dict[str, Any]:
        return get_type_hints(self.cls)

    def env_name(self, name: str) -> Optional[str]:
        return self.env_prefix + name.upper() if self.env_prefix is not None else None


@dataclass
class Loaded:
    """The settings and where each value came from, for the checks that span fields."""

    value: Any
    wheres: Dict[str, str]
    part_wheres: Dict[str, Parts]

    def at(self, name: str, part: Optional[Union[int, str]] = None) -> str:
        """Where field `name` (or its item or key `part`) was set: "file:line", "environment variable X",
        "option --x", or "default"."""
        if part is not None and part in self.part_wheres.get(name, {}):
            return self.part_wheres[name][part]
        return self.wheres.get(name, "default")


def _unwrap(kind: Any) -> Tuple[Any, bool]:
    """(the type without Optional, whether it was Optional)."""
    if getattr(kind, "__origin__", None) is Union and type(None) in kind.__args__:
        return next(a for a in kind.__args__ if a is not type(None)), True
    return kind, False


def coerce(schema: Schema, name: str, value: Any, where: str, parts: Optional[Parts] = None) -> Any:
    """`value` as the type of field `name`; text (from the environment or a flag, or a file) is parsed."""
    kind, optional = _unwrap(schema.types()[name])
    rules = schema.rules(name)
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE_TEXTS)):
        return None
    base = getattr(kind, "__origin__", kind)
    args = getattr(kind, "__args__", ())

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}: field '{name}' must be {expected}, got {value!r}")

    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE_TEXTS + _FALSE_TEXTS:
            return value.strip().lower() in _TRUE_TEXTS
        raise bad("true or false")
    if base is int or base is float:
        expected = schema.words.integer if base is int else "a number"
        if isinstance(value, bool):
            raise bad(expected)
        try:
            return base(value)
        except (TypeError, ValueError):
            raise bad(expected) from None
    if base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    if base is list and args and getattr(args[0], "__origin__", None) is dict:
        return _mappings(name, value, where, parts or {}, rules.keys, bad)
    if base is list:
        if isinstance(value, str):
            return [v for v in _SPLITTERS[rules.split].split(value.strip()) if v]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise bad(f"a list of strings (or a {_SPLIT_WORDS[rules.split]} string)")
    if base is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            if args[-1:] == (Any,):  # Dict[str, Any]: values as written
                return dict(value)
            if all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value.values()):
                return {k: str(v) for k, v in value.items()}
        raise bad("a mapping of names to values")
    raise bad(str(kind))  # pragma: no cover - every field type is handled above


def _mappings(name: str, value: Any, where: str, parts: Parts, keys: Tuple[str, ...],
              bad: Callable[[str], ConfigError]) -> List[Dict[str, Any]]:
    known = ", ".join(keys)
    if not isinstance(value, list):
        raise bad(f"a list of {{{known}}} mappings")
    for i, v in enumerate(value):
        here = parts.get(i, where)
        if not isinstance(v, dict):
            raise ConfigError(f"{here}: field '{name}[{i}]' must be a mapping of {{{known}}}, got {v!r}")
        unknown = sorted(str(k) for k in set(v) - set(keys))
        if unknown:
            raise ConfigError(f"{here}: field '{name}[{i}]' has unknown keys {unknown} (known: {known})")
    return [dict(v) for v in value]


def _yaml_layer(schema: Schema, path: Path) -> Dict[str, Tuple[Any, str, Parts]]:
    # Imported here: the agent and the wrapper read settings but never YAML, and PyYAML costs each of them 2 MB.
    import yaml

    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {schema.what}: {e.strerror}") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{pos}: not valid YAML: {getattr(e, 'problem', e)}") from e
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the configuration must be a mapping of field: value")
    known = schema.fields()
    out: Dict[str, Tuple[Any, str, Parts]] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        where = f"{path}:{key_node.start_mark.line + 1}"
        if key not in known:
            raise ConfigError(f"{where}: unknown field '{key}' (known: {', '.join(sorted(known))})")
        parts: Parts = {}
        if isinstance(value_node, yaml.SequenceNode):
            parts = {i: f"{path}:{item.start_mark.line + 1}" for i, item in enumerate(value_node.value)}
        elif isinstance(value_node, yaml.MappingNode):
            parts = {str(k.value): f"{path}:{k.start_mark.line + 1}" for k, _ in value_node.value}
        out[key] = (yaml.SafeLoader(yaml.serialize(value_node)).get_single_data(), where, parts)
    return out


def load(schema: Schema, path: Optional[Union[str, Path]] = None, *, environ: Optional[Mapping[str, str]] = None,
         overrides: Optional[Mapping[str, Any]] = None) -> Loaded:
    """The settings from their layers, each value checked against its field's type and bounds. `overrides` are the
    flags (None values are "not given"). Checks that span fields are the caller's, with `Loaded.at`."""
    env = os.environ if environ is None else environ
    fields = schema.fields()
    values: Dict[str, Any] = {}
    wheres: Dict[str, str] = {}
    part_wheres: Dict[str, Parts] = {}

    def put(name: str, value: Any, where: str, parts: Optional[Parts] = None) -> None:
        values[name] = coerce(schema, name, value, where, parts)
        wheres[name] = where
        if parts:
            part_wheres[name] = parts
        else:
            part_wheres.pop(name, None)

    for name in fields:
        var = schema.rules(name).env_default
        if var is not None and var in env:
            put(name, env[var], f"environment variable {var}")
    if path is None and schema.file_env and env.get(schema.file_env):
        path = env[schema.file_env]
    if path is not None:
        for key, (value, where, parts) in _yaml_layer(schema, Path(path)).items():
            put(key, value, where, parts)
    for name in fields:
        var = schema.env_name(name)
        if var is not None and var in env:
            put(name, env[var], f"environment variable {var}")
    for name, value in (overrides or {}).items():
        if value is None:
            continue
        if name not in fields:
            raise ConfigError(f"unknown option '{name}'")
        put(name, value, f"option --{name.replace('_', '-')}")
    loaded = Loaded(schema.cls(**values), wheres, part_wheres)
    for name in fields:
        check_bounds(schema, name, getattr(loaded.value, name), loaded.at(name))
    return loaded


def check_bounds(schema: Schema, name: str, value: Any, where: str) -> None:
    r = schema.rules(name)
    if value is None:
        return
    note = f" ({r.note})" if r.note else ""
    if r.choices and value not in r.choices:
        if len(r.choices) == 2:
            allowed = " or ".join(repr(c) for c in r.choices)
        else:
            allowed = "one of " + ", ".join(r.choices)
        raise ConfigError(f"{where}: field '{name}' must be {allowed}, got {value!r}")
    if r.minimum is not None and not value >= r.minimum:
        at_least = schema.words.at_least.format(bound=_number(r.minimum))
        raise ConfigError(f"{where}: field '{name}' must be {at_least}{note}, got {value}")
    if r.above is not None and not value > r.above:
        raise ConfigError(f"{where}: field '{name}' must be more than {_number(r.above)}{note}, got {value}")
    if r.maximum is not None and not value <= r.maximum:
        raise ConfigError(f"{where}: field '{name}' must be at most {_number(r.maximum)}{note}, got {value}")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def field_names(schema: Schema) -> List[str]:
    return list(schema.fields())


# -- the documentation -------------------------------------------------------------------------------------------
def type_text(schema: Schema, name: str) -> str:
    kind, optional = _unwrap(schema.types()[name])
    rules = schema.rules(name)
    base = getattr(kind, "__origin__", kind)
    args = getattr(kind, "__args__", ())
    if base is list and args and getattr(args[0], "__origin__", None) is dict:
        text = "list of {" + ", ".join(rules.keys) + "}"
    elif base is list:
        text = f"list of strings ({_SPLIT_WORDS[rules.split]} as one string)"
    elif base is dict:
        text = "mapping"
    else:
        text = {bool: "bool", int: "int", float: "float", str: "string"}[base]
    if rules.choices:
        text += ": " + " \\| ".join(f"`{c}`" for c in rules.choices)
    bounds = []
    if rules.minimum is not None:
        bounds.append(f"≥ {_number(rules.minimum)}")
    if rules.above is not None:
        bounds.append(f"> {_number(rules.above)}")
    if rules.maximum is not None:
        bounds.append(f"≤ {_number(rules.maximum)}")
    if bounds:
        text += ", " + " and ".join(bounds)
    if optional:
        text += ", or unset"
    return text


def default_text(schema: Schema, name: str) -> str:
    f = schema.fields()[name]
    rules = schema.rules(name)
    if rules.default_doc is not None:
        return rules.default_doc
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, (list, dict)) and not value:
        return "empty"
    if isinstance(value, list):
        return "`" + ", ".join(value) + "`"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{_number(value) if isinstance(value, float) else value}`"


def reference(schema: Schema, flags: Mapping[str, str]) -> str:
    """A Markdown table of the schema's fields: key, type and bounds, default, variable, flag, what it is for."""
    rows = ["| key | type | default | environment | flag | |", "|---|---|---|---|---|---|"]
    for name in schema.fields():
        rules = schema.rules(name)
        var = schema.env_name(name) or rules.env_default
        env_text = f"`{var}`" if var else ""
        if rules.env_default:
            env_text += " (default)"
        flag = f"`{flags[name]}`" if name in flags else ""
        doc = " ".join(rules.doc.split()).replace("|", "\\|")
        rows.append(f"| `{name}` | {type_text(schema, name)} | {default_text(schema, name)} | {env_text} | {flag} "
                    f"| {doc} |")
    return "\n".join(rows) + "\n"


__all__ = ["Loaded", "NAMES", "PATHS", "Rules", "Schema", "WORDS", "Words", "check_bounds", "coerce",
           "field_names", "load", "reference", "setting"]
