"""Presets: small overlays of ``params.yaml`` that hold only the keys they change.

``presets/<name>.yaml`` is a few keys of ``params.yaml`` in the same nested layout.
``make preset PRESET=<name>`` (``python -m src.presets <name>``) writes each of its values
into ``params.yaml`` in place: every other key, every comment and the layout stay as they
are, so a switch keeps the edits a user made to keys the preset does not mention. The
``mnist-default`` preset sets back every key that any other preset sets, so
``make preset PRESET=mnist-default`` undoes any switch.

The editing is ``ruamel.yaml``'s round trip (it reads a file into mappings that remember
their comments, quoting and flow style, and writes it back byte for byte): each value the
preset sets replaces the old one, keeping its line's comment. A comment a longer value
pushed aside returns to the file's usual comment column when the value is short again. The
result is parsed again with PyYAML (what the stages read) and must equal ``params.yaml``
with the preset's values merged in before it replaces the file (atomically), so an unusual
layout stops with one line, never a wrong file. A key the schema does not know stops the
switch with one line naming it.
"""
from __future__ import annotations

import argparse
import collections
import copy
import dataclasses
import io
import typing
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError

from src.config import PARAMS_FILE, Params
from src.errors import UserError, stage_main

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
DEFAULT = "mnist-default"  # params.yaml as shipped: sets back every key the other presets set
_ONE_PER_LINE = "write one 'key: value' per line, nested by indentation"


def _round_trip() -> YAML:
    rt = YAML()  # round-trip mode: comments, quotes, flow style and key order survive
    rt.preserve_quotes = True
    rt.width = 4096  # never fold a long line
    return rt


def _schema_leaves(cls: type = Params, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], bool]:
    """Every key path of the params schema: True for a value, False for a section."""
    out = {}
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = prefix + (field.name,)
        if dataclasses.is_dataclass(hints[field.name]):
            out[path] = False
            out.update(_schema_leaves(hints[field.name], path))
        else:
            out[path] = True
    return out


def _leaves(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_leaves(value, prefix + (str(key),)))
        else:
            out[prefix + (str(key),)] = value
    return out


def _merged(base: dict, leaves: dict[tuple[str, ...], Any]) -> dict:
    out = copy.deepcopy(base)
    for path, value in leaves.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _load(text: str, name: str) -> dict:
    """``text`` parsed as the stages parse it (PyYAML); a mapping, or one line saying why not."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"{name}: not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{name}: must be a mapping of params keys, got {type(raw).__name__}")
    return raw


def _load_round_trip(text: str, name: str) -> CommentedMap:
    _load(text, name)  # PyYAML's verdict and message first
    try:
        tree = _round_trip().load(text)
    except RuamelError as exc:
        raise UserError(f"{name}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return tree if tree is not None else CommentedMap()


def _rt_leaves(tree: CommentedMap, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """The round-trip values of ``tree``'s leaves by key path; raises if one spans lines."""
    out = {}
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
            out.update(_rt_leaves(value, path))
        elif isinstance(value, (CommentedMap, CommentedSeq)) and value and not value.fa.flow_style():
            raise ValueError(".".join(path))  # a block sequence: not one line
        else:
            out[path] = value
    return out


def _plain_copy(value: Any) -> Any:
    """A preset's value without the preset's own comments, keeping its flow style and quoting."""
    if isinstance(value, CommentedSeq):
        seq = CommentedSeq(_plain_copy(v) for v in value)
        seq.fa.set_flow_style()
        return seq
    if isinstance(value, CommentedMap):
        mapping = CommentedMap((k, _plain_copy(v)) for k, v in value.items())
        mapping.fa.set_flow_style()
        return mapping
    return value


def overlay(preset_text: str, preset_name: str) -> dict[tuple[str, ...], Any]:
    """The keys a preset sets, each with its value as written (round-trip type): ``{path: value}``.

    Raises UserError naming the first key the params schema does not know, or a section
    given a value.
    """
    raw = _load(preset_text, preset_name)
    schema = _schema_leaves()
    for path in _leaves(raw):
        dotted = ".".join(path)
        if path not in schema:
            raise UserError(f"{preset_name}: unknown params key '{dotted}'")
        if not schema[path]:
            raise UserError(f"{preset_name}: params key '{dotted}' is a section: set the keys under it")
    try:
        values = _rt_leaves(_load_round_trip(preset_text, preset_name))
    except ValueError:
        raise UserError(f"{preset_name}: {_ONE_PER_LINE}") from None
    if set(values) != set(_leaves(raw)):
        raise UserError(f"{preset_name}: {_ONE_PER_LINE}")
    return values


def _eol_comment(parent: CommentedMap, key: str):
    """The comment token at the end of ``key``'s line in ``parent`` (None when there is none)."""
    slots = parent.ca.items.get(key)
    return slots[2] if slots and len(slots) > 2 else None


def _comment_column(tree: CommentedMap) -> int:
    """The column most of the file's value comments start at (params.yaml: 30)."""
    cols = collections.Counter()
    todo = [tree]
    while todo:
        node = todo.pop()
        for key, value in node.items():
            if isinstance(value, CommentedMap) and not value.fa.flow_style():
                todo.append(value)
            elif _eol_comment(node, key) is not None:
                cols[_eol_comment(node, key).column] += 1
    return cols.most_common(1)[0][0] if cols else 0


def apply(params_text: str, preset_text: str, preset_name: str, params_name: str = PARAMS_FILE) -> str:
    """``params_text`` with every value ``preset_text`` sets written in; the rest unchanged."""
    values = overlay(preset_text, preset_name)
    base = _load(params_text, params_name)
    tree = _load_round_trip(params_text, params_name)
    lines = params_text.splitlines()
    align = _comment_column(tree)
    for path, value in values.items():
        parent = tree
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, CommentedMap) else None
        key = path[-1]
        if not isinstance(parent, CommentedMap) or key not in parent:
            raise UserError(f"{params_name}: has no line for params key '{'.'.join(path)}' (which {preset_name} "
                            f"sets); add it back as '{key}: ...'")
        if isinstance(parent[key], CommentedMap) and parent[key]:
            raise UserError(f"{params_name}: params key '{'.'.join(path)}' is a section, {preset_name} gives it "
                            "a value")
        comment = _eol_comment(parent, key)
        if comment is not None and not parent.fa.flow_style():
            line = lines[parent.lc.key(key)[0]]
            old_end = len(line[:comment.column].rstrip())
            if comment.column <= old_end + 1:  # pushed aside by a long value: back to the usual column
                comment.column = align
        parent[key] = _plain_copy(value)
    out = io.StringIO()
    _round_trip().dump(tree, out)
    result = out.getvalue()
    if "\r\n" in params_text:  # ruamel writes "\n"; keep a Windows file's line ends
        result = result.replace("\r\n", "\n").replace("\n", "\r\n")
    expected = _merged(base, _leaves(_load(preset_text, preset_name)))
    if _load(result, params_name) != expected:
        raise UserError(f"{params_name}: its layout is too unusual to set {preset_name}'s keys line by line; "
                        "edit it by hand")
    return result


def names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def read(name: str) -> tuple[str, str]:
    """``(display name, text)`` of preset ``name`` (a name under presets/ or a .yaml path)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UserError(f"no preset '{name}' (presets/: {', '.join(names())})")
    shown = f"presets/{path.name}" if path.resolve().parent == PRESETS_DIR else str(path)
    return shown, path.read_text(encoding="utf-8")


def preset_params(name: str, params_path: str | Path = PARAMS_FILE) -> dict:
    """The parsed params of ``name`` on top of ``params_path``: what switching to the default,
    then to ``name`` gives (so the result does not depend on which preset is active)."""
    params_path = Path(params_path)
    text = params_path.read_text(encoding="utf-8")
    for step in dict.fromkeys((DEFAULT, name)):
        shown, preset_text = read(step)
        text = apply(text, preset_text, shown, str(params_path))
    return _load(text, str(params_path))


def switch(name: str, params_path: str | Path = PARAMS_FILE) -> str:
    """Write preset ``name`` into ``params_path``; return what to tell the user."""
    from src.atomic import write_text

    params_path = Path(params_path)
    shown, preset_text = read(name)
    try:
        before = params_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{params_path}: params file not found (run from the repository root)") from None
    after = apply(before, preset_text, shown, str(params_path))
    old, new = _leaves(_load(before, str(params_path))), _leaves(_load(after, str(params_path)))
    changed = sum(old.get(path) != value for path, value in new.items())
    if after != before:
        write_text(params_path, after)
    said = (f"{params_path}: {changed} of the {len(overlay(preset_text, shown))} keys {shown} sets changed, "
            "every other key and comment kept; run: make repro")
    if Path(shown).stem != DEFAULT:
        default_name, default_text = read(DEFAULT)
        mine = overlay(preset_text, shown)
        default_values = _leaves(_load(default_text, default_name))
        kept = [".".join(path) for path in overlay(default_text, default_name)
                if path not in mine and new.get(path) != default_values[path]]
        if kept:
            listed = ", ".join(kept[:4]) + (f" and {len(kept) - 4} more" if len(kept) > 4 else "")
            said += (f"\nnote: {listed} (set by other presets, not by this one) keep their values; "
                     f"make preset PRESET={DEFAULT} first sets them back to the default")
    return said


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description="Write a preset's keys into params.yaml, keeping the rest.")
    parser.add_argument("preset", help=f"a name under presets/ ({', '.join(names())}) or a .yaml path")
    parser.add_argument("--params", default=PARAMS_FILE, help="the params file to edit (default params.yaml)")
    args = parser.parse_args()
    print(switch(args.preset, args.params))


if __name__ == "__main__":
    main()
