"""Presets: small overlays of ``params.yaml`` that hold only the keys they change.

``presets/<name>.yaml`` is a few keys of ``params.yaml`` in the same nested layout.
``make preset PRESET=<name>`` (``python -m src.presets <name>``) writes each of its values
into ``params.yaml`` in place: every other key, every comment and the layout stay as they
are, so a switch keeps the edits a user made to keys the preset does not mention. The
``mnist-default`` preset sets back every key that any other preset sets, so
``make preset PRESET=mnist-default`` undoes any switch.

``params.yaml`` keeps to one ``key: value  # comment`` per line, nested by indentation; a
value is replaced by the preset's own text for it, with the comment kept in its column. The
result is parsed again and must equal ``params.yaml`` with the preset's values merged in
before it replaces the file (atomically), so an unusual layout stops with one line, never
a wrong file. A key the schema does not know stops the switch with one line naming it.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from src.config import PARAMS_FILE, Params
from src.errors import UserError, stage_main

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"
DEFAULT = "mnist-default"  # params.yaml as shipped: sets back every key the other presets set

_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<rest>(\s.*)?)$")


@dataclass
class _Entry:
    """One ``key: value  # comment`` line of a YAML file and the lines that continue its value."""
    line: int                  # index of the key's line
    indent: str
    key: str
    gap: str                   # the whitespace between ``key:`` and the value
    value: str                 # the value's text as written ('' for a section or a multi-line value)
    comment: str               # from ``#`` to the end of the line ('' when none)
    comment_col: int           # column of ``#`` (-1 when no comment)
    end: int = 0               # index after the last line that belongs to this entry
    children: bool = False     # a section: keys nested under it


def _split_comment(rest: str) -> tuple[str, str]:
    """``(value, comment)`` of the text after ``key:``; a ``#`` inside quotes is not a comment."""
    quote, i = None, 0
    while i < len(rest):
        ch = rest[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'" and rest[:i].rstrip()[-1:] in ("", "[", "{", ","):
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i], rest[i:]
        i += 1
    return rest, ""


def _entries(lines: list[str]) -> dict[tuple[str, ...], _Entry]:
    """Every key line of ``lines`` by its key path (blank and comment lines skipped)."""
    out: dict[tuple[str, ...], _Entry] = {}
    stack: list[tuple[int, tuple[str, ...]]] = []  # (indent, path) of the open keys
    last: _Entry | None = None
    for i, text in enumerate(lines):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _KEY_LINE.match(text)
        if match is None:  # a block sequence item or a continued value: part of the last key
            if last is not None:
                last.end = i + 1
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stack:
            out[stack[-1][1]].children = True
        path = (stack[-1][1] if stack else ()) + (match["key"],)
        rest = match["rest"]
        value, comment = _split_comment(rest)
        gap = value[:len(value) - len(value.lstrip())] if value.strip() else " "
        col = len(text) - len(rest) + len(value) if comment else -1
        last = out[path] = _Entry(i, match["indent"], match["key"], gap, value.strip(), comment.rstrip(), col, i + 1)
        stack.append((indent, path))
    return out


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
    import copy
    out = copy.deepcopy(base)
    for path, value in leaves.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


def _load(text: str, name: str) -> dict:
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


def overlay(preset_text: str, preset_name: str) -> dict[tuple[str, ...], str]:
    """The keys a preset sets, each with its value's text as written: ``{path: text}``.

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
    texts = {path: e.value for path, e in _entries(preset_text.splitlines()).items() if not e.children}
    if set(texts) != set(_leaves(raw)) or any(yaml.safe_load(texts[p]) != v for p, v in _leaves(raw).items()):
        raise UserError(f"{preset_name}: write one 'key: value' per line, nested by indentation")
    return texts


def _comment_column(entries: dict[tuple[str, ...], _Entry]) -> int:
    """The column most of the file's value comments start at (params.yaml: 30)."""
    cols = collections.Counter(e.comment_col for e in entries.values() if e.comment and e.value)
    return cols.most_common(1)[0][0] if cols else 0


def apply(params_text: str, preset_text: str, preset_name: str, params_name: str = PARAMS_FILE) -> str:
    """``params_text`` with every value ``preset_text`` sets written in; the rest unchanged."""
    texts = overlay(preset_text, preset_name)
    base = _load(params_text, params_name)
    lines = params_text.splitlines(keepends=True)
    entries = _entries([line.rstrip("\r\n") for line in lines])
    for path in texts:
        if path not in entries:
            inline = next((path[:i] for i in range(len(path) - 1, 0, -1) if path[:i] in entries), None)
            if inline is not None and entries[inline].value:
                raise UserError(f"{params_name}: params key '{'.'.join(inline)}' is written on one line; "
                                f"write its keys one per line for {preset_name} to set '{path[-1]}'")
            raise UserError(f"{params_name}: has no line for params key '{'.'.join(path)}' (which {preset_name} "
                            f"sets); add it back as '{path[-1]}: ...'")
        if entries[path].children:
            raise UserError(f"{params_name}: params key '{'.'.join(path)}' is a section, {preset_name} gives it "
                            "a value")
    align = _comment_column(entries)
    for path, value in sorted(texts.items(), key=lambda item: -entries[item[0]].line):  # bottom up: lines may go
        entry = entries[path]
        head = f"{entry.indent}{entry.key}:{entry.gap}{value}"
        if entry.comment:
            old_end = len(f"{entry.indent}{entry.key}:{entry.gap}{entry.value}")
            wanted = entry.comment_col if entry.comment_col > old_end + 1 else align
            head = head.ljust(max(wanted, len(head) + 1)) + entry.comment
        newline = lines[entry.end - 1][len(lines[entry.end - 1].rstrip("\r\n")):]
        lines[entry.line:entry.end] = [head + newline]
    result = "".join(lines)
    expected = _merged(base, {path: yaml.safe_load(text) for path, text in texts.items()})
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
        kept = [".".join(path) for path, text in overlay(default_text, default_name).items()
                if path not in mine and new.get(path) != yaml.safe_load(text)]
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
