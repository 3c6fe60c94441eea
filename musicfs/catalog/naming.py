"""Path templates (beets-style) and file-name sanitising.

A template is a ``/``-separated list of segments; the last names the file (the extension
is appended). Segments use ``$field`` / ``${field}`` and the functions ``%if{cond,then[,else]}``,
``%ifdef{field,then[,else]}``, ``%upper{text}``, ``%lower{text}``, ``%left{text,n}`` and
``%aunique{}``. A ``/`` inside a *value* never creates a folder: values are sanitised first.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass

MAX_NAME_BYTES = 255
DEFAULT_TEMPLATE = (
    "$albumartist/$album%if{$year, ($year)}%aunique{}/%if{$disc_track,$disc_track - }$title"
)
TEMPLATE_FIELDS = frozenset(
    {
        "albumartist",
        "artist",
        "album",
        "title",
        "track",
        "disc",
        "disc_track",
        "year",
        "genre",
        "ext",
        "stem",
        "comp",
    }
)
# Marker left by %aunique{} and resolved once all albums are known.
AUNIQUE_MARKER = "\x00aunique\x00"


class TemplateError(ValueError):
    pass


# -- sanitising --------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _legacy_bytes(exc: UnicodeError) -> tuple[str, int]:
    """Decode error handler: bytes that are not UTF-8 are read as Windows-1252 (Latin-1
    where it leaves a byte undefined), the encoding such names were almost always written
    in -- 'café' stays 'café' rather than becoming U+FFFD."""
    assert isinstance(exc, UnicodeDecodeError)
    bad = exc.object[exc.start : exc.end]
    text = "".join(
        bytes([b]).decode("cp1252", errors="strict") if b not in _CP1252_UNDEFINED else chr(b)
        for b in bad
    )
    return text, exc.end


_CP1252_UNDEFINED = frozenset({0x81, 0x8D, 0x8F, 0x90, 0x9D})
codecs.register_error("musicfs-legacy", _legacy_bytes)


def display_text(text: str) -> str:
    """An origin path component (surrogateescape-decoded bytes) as the text it was meant
    to be: UTF-8 where it is UTF-8, Windows-1252 for the bytes that are not."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that did not come from a byte
        return text.encode("utf-8", "replace").decode("utf-8")
    return raw.decode("utf-8", "musicfs-legacy")


def truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` bytes of UTF-8 without splitting a character."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def sanitize_component(text: str, *, suffix: str = "") -> str:
    """One safe path component: no ``/``, NUL or control characters, no leading dot, not
    empty, at most 255 bytes of UTF-8 including ``suffix`` (which is kept whole)."""
    text = unicodedata.normalize("NFC", text.encode("utf-8", "replace").decode("utf-8"))
    text = text.replace("/", "_").replace("\\", "_")
    text = _CONTROL.sub("_", text)
    text = text.strip()
    if text.startswith("."):
        text = "_" + text[1:]
    if not text:
        text = "_"
    suffix = _CONTROL.sub("_", suffix.replace("/", "_"))
    budget = MAX_NAME_BYTES - len(suffix.encode("utf-8"))
    text = truncate_utf8(text, budget).rstrip() or "_"
    return text + suffix


def with_counter(name: str, ext: str, n: int) -> str:
    """``name (n)ext``, still within the byte limit."""
    return sanitize_component(name, suffix=f" ({n}){ext}")


# -- template ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Field:
    name: str


@dataclass(frozen=True)
class _Call:
    func: str
    args: tuple[tuple[_Node, ...], ...]


_Node = _Text | _Field | _Call
_FUNCTIONS = {
    "if": (2, 3),
    "ifdef": (2, 3),
    "upper": (1, 1),
    "lower": (1, 1),
    "left": (2, 2),
    "aunique": (0, 1),
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Parser:
    def __init__(self, source: str):
        self.s = source
        self.i = 0

    def error(self, message: str) -> TemplateError:
        return TemplateError(f"template {self.s!r}, at character {self.i + 1}: {message}")

    def parse(self, stop: str = "") -> tuple[_Node, ...]:
        nodes: list[_Node] = []
        buf: list[str] = []

        def flush() -> None:
            if buf:
                nodes.append(_Text("".join(buf)))
                buf.clear()

        while self.i < len(self.s):
            c = self.s[self.i]
            if c in stop:
                break
            if c not in "$%":
                buf.append(c)
                self.i += 1
            elif self.s.startswith(c + c, self.i):  # "$$", "%%": the character itself
                buf.append(c)
                self.i += 2
            else:
                flush()
                nodes.append(self.field() if c == "$" else self.call())
        flush()
        return tuple(nodes)

    def field(self) -> _Field:
        self.i += 1
        braced = self.s.startswith("{", self.i)
        if braced:
            self.i += 1
        m = _IDENT.match(self.s, self.i)
        if not m:
            raise self.error("expected a field name after '$'")
        name = m.group(0)
        if name not in TEMPLATE_FIELDS:
            raise self.error(f"unknown field ${name} (known: {', '.join(sorted(TEMPLATE_FIELDS))})")
        self.i = m.end()
        if braced:
            if not self.s.startswith("}", self.i):
                raise self.error("missing '}'")
            self.i += 1
        return _Field(name)

    def call(self) -> _Call:
        self.i += 1
        m = _IDENT.match(self.s, self.i)
        if not m or m.group(0) not in _FUNCTIONS:
            raise self.error(f"unknown function (known: {', '.join('%' + f for f in _FUNCTIONS)})")
        func = m.group(0)
        self.i = m.end()
        if not self.s.startswith("{", self.i):
            raise self.error(f"expected '{{' after %{func}")
        self.i += 1
        args: list[tuple[_Node, ...]] = []
        while True:
            args.append(self.parse(stop=",}"))
            if self.i >= len(self.s):
                raise self.error(f"unclosed %{func}{{")
            if self.s[self.i] == "}":
                self.i += 1
                break
            self.i += 1  # ','
        if args == [()]:
            args = []
        low, high = _FUNCTIONS[func]
        if not low <= len(args) <= high:
            raise self.error(f"%{func} takes {low}..{high} arguments, got {len(args)}")
        return _Call(func, tuple(args))


class Template:
    """A compiled path template."""

    def __init__(self, source: str = DEFAULT_TEMPLATE):
        self.source = source
        segments = source.strip("/").split("/")
        if not source.strip("/") or any(not seg.strip() for seg in segments):
            raise TemplateError(f"template {source!r}: empty path segment")
        # '/' inside %func{...} arguments would be odd; splitting first keeps values safe.
        self.segments = [_Parser(seg).parse() for seg in segments]
        for seg in self.segments:
            if not seg:
                raise TemplateError(f"template {source!r}: empty path segment")

    def render(self, values: Mapping[str, str]) -> list[str]:
        """Raw (unsanitised) segments. Values must already be free of '/'. A folder that
        renders empty (``%upper{$genre}`` of a track without a genre) is left out rather
        than becoming a folder named ``_``."""
        *folders, name = [_render(seg, values) for seg in self.segments]
        return [f for f in folders if f.replace(AUNIQUE_MARKER, "").strip()] + [name]


def _render(nodes: tuple[_Node, ...], values: Mapping[str, str]) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Field):
            out.append(values.get(node.name, ""))
        else:
            out.append(_CALLS[node.func](node.args, values))
    return "".join(out)


def _if(args: tuple[tuple[_Node, ...], ...], values: Mapping[str, str]) -> str:
    cond = _render(args[0], values).strip()
    if cond and cond not in ("0", "false"):
        return _render(args[1], values)
    return _render(args[2], values) if len(args) > 2 else ""


def _ifdef(args: tuple[tuple[_Node, ...], ...], values: Mapping[str, str]) -> str:
    name = _render(args[0], values).strip()
    if values.get(name):
        return _render(args[1], values)
    return _render(args[2], values) if len(args) > 2 else ""


def _left(args: tuple[tuple[_Node, ...], ...], values: Mapping[str, str]) -> str:
    text = _render(args[0], values)
    try:
        n = int(_render(args[1], values).strip())
    except ValueError:
        return text
    return text[:n]


_CALLS: dict[str, Callable[[tuple[tuple[_Node, ...], ...], Mapping[str, str]], str]] = {
    "if": _if,
    "ifdef": _ifdef,
    "upper": lambda a, v: _render(a[0], v).upper(),
    "lower": lambda a, v: _render(a[0], v).lower(),
    "left": _left,
    "aunique": lambda a, v: AUNIQUE_MARKER,
}
