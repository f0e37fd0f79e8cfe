"""Parse the IR text form (see ``printer``) back into a :class:`Graph`.

A hand-written tokenizer feeds a recursive-descent parser. Ops are rebuilt with
``Graph.create_node``, which re-infers their types; the parser checks the types the text
states against them. Every malformed input raises :class:`IRParseError` naming line and
column: ``line 3, column 14: expected ')', got ','``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from convforge.errors import ConvforgeError, IRParseError
from convforge.ir.graph import Graph, Node, Value
from convforge.ir.printer import META_SEP, NAME_CHARS, is_region_op
from convforge.ir.types import BATCH, DTYPES, TensorType

_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")
_DIGITS = frozenset("0123456789")
_PUNCT = frozenset("()[]{},:=")
#: the deepest nesting of ``[...]`` in an attribute value (the printer never nests beyond 2)
MAX_NESTING = 32
#: the longest integer literal: every IR integer fits int64 (19 digits)
MAX_INT_DIGITS = 19


@dataclass(frozen=True)
class Token:
    """``kind`` is one of: value, global, ident, int, float, string, punct, comment, newline, eof."""

    kind: str
    text: str  # the source text (for value/global: the name; for comment: after '#')
    value: Any
    line: int
    col: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of input"
        if self.kind == "newline":
            return "end of line"
        if self.kind == "comment":
            return "a comment"
        if self.kind == "value":
            return f"value %{self.value}"
        if self.kind == "global":
            return f"@{self.value}"
        return repr(self.text)


def parse(text: str) -> Graph:
    """Parse the text form of one graph; raises IRParseError on malformed text."""
    return _Parser(_tokenize(text)).parse_graph()


# -- tokenizer ----------------------------------------------------------------------------
def _error(line: int, col: int, expected: str, got: str) -> IRParseError:
    return IRParseError(f"line {line}, column {col}: expected {expected}, got {got}")


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    line, line_start, i, n = 1, 0, 0, len(text)
    while i < n:
        c = text[i]
        col = i - line_start + 1
        if c == "\n":
            tokens.append(Token("newline", "\n", None, line, col))
            i += 1
            line, line_start = line + 1, i
        elif c in " \t\r":
            i += 1
        elif c == "#":
            end = text.find("\n", i)
            end = n if end < 0 else end
            tokens.append(Token("comment", text[i + 1 : end], None, line, col))
            i = end
        elif c in "%@":
            kind = "value" if c == "%" else "global"
            if i + 1 < n and text[i + 1] == '"':
                name, i = _scan_string(text, i + 1, line, line_start)
            else:
                j = i + 1
                while j < n and text[j] in NAME_CHARS:
                    j += 1
                if j == i + 1:
                    got = repr(text[j]) if j < n else "end of input"
                    raise _error(line, j - line_start + 1, f"a name after {c!r}", got)
                name, i = text[i + 1 : j], j
            tokens.append(Token(kind, c + name, name, line, col))
        elif c == '"':
            s, j = _scan_string(text, i, line, line_start)
            tokens.append(Token("string", text[i:j], s, line, col))
            i = j
        elif c == "-" and text.startswith("->", i):
            tokens.append(Token("punct", "->", None, line, col))
            i += 2
        elif c in _DIGITS or (c == "-" and i + 1 < n and (text[i + 1] in _DIGITS or text[i + 1] in "in")):
            tok, i = _scan_number(text, i, line, line_start)
            tokens.append(tok)
        elif c in _IDENT_START:
            j = i
            while j < n and text[j] in _IDENT_CHARS:
                j += 1
            tokens.append(Token("ident", text[i:j], text[i:j], line, col))
            i = j
        elif c in _PUNCT:
            tokens.append(Token("punct", c, None, line, col))
            i += 1
        else:
            raise _error(line, col, "a token", repr(c))
    tokens.append(Token("eof", "", None, line, i - line_start + 1))
    return tokens


def _scan_string(text: str, i: int, line: int, line_start: int) -> tuple[str, int]:
    """The JSON string starting at ``text[i] == '"'``, and the index just past it."""
    j = i + 1
    while j < len(text) and text[j] not in '"\n':
        j += 2 if text[j] == "\\" else 1
    if j >= len(text) or text[j] != '"':
        raise _error(line, i - line_start + 1, "a closing '\"' on the same line", "an unterminated string")
    try:
        return json.loads(text[i : j + 1]), j + 1
    except json.JSONDecodeError as exc:
        raise _error(line, i - line_start + 1 + exc.pos, "a valid string escape", repr(exc.msg)) from None


def _scan_number(text: str, i: int, line: int, line_start: int) -> tuple[Token, int]:
    """An int (``-3``) or float (``0.5``, ``1e-05``, ``-inf``) starting at ``text[i]``."""
    col = i - line_start + 1
    j = i + 1 if text[i] == "-" else i
    for word in ("inf", "nan"):
        if text.startswith(word, j) and not (j + 3 < len(text) and text[j + 3] in _IDENT_CHARS):
            return Token("float", text[i : j + 3], float(text[i : j + 3]), line, col), j + 3

    def digits(k: int) -> int:
        start = k
        while k < len(text) and text[k] in _DIGITS:
            k += 1
        if k == start:
            got = repr(text[k]) if k < len(text) else "end of input"
            raise _error(line, k - line_start + 1, "a digit", got)
        return k

    j = digits(j)
    is_float = False
    if j < len(text) and text[j] == ".":
        j, is_float = digits(j + 1), True
    if j < len(text) and text[j] in "eE":
        j += 1
        if j < len(text) and text[j] in "+-":
            j += 1
        j, is_float = digits(j), True
    if j < len(text) and text[j] in _IDENT_CHARS:
        raise _error(line, j - line_start + 1, "the end of the number", repr(text[j]))
    s = text[i:j]
    if is_float:
        return Token("float", s, float(s), line, col), j
    if len(s.lstrip("-")) > MAX_INT_DIGITS or not -(2**63) <= int(s) < 2**63:
        shown = s if len(s) <= 40 else f"{s[:20]}... ({len(s.lstrip('-'))} digits)"
        raise _error(line, col, "an integer that fits in int64", shown)
    return Token("int", s, int(s), line, col), j


# -- parser -------------------------------------------------------------------------------
class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0

    # token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        if tok.kind != "eof":
            self.pos += 1
        return tok

    def at(self, kind: str, text: str | None = None) -> bool:
        return self.tok.kind == kind and (text is None or self.tok.text == text)

    def accept(self, kind: str, text: str | None = None) -> Token | None:
        return self.advance() if self.at(kind, text) else None

    def expect(self, kind: str, text: str | None = None, what: str | None = None) -> Token:
        if not self.at(kind, text):
            raise self.fail(what or (repr(text) if text is not None else kind))
        return self.advance()

    def fail(self, expected: str, tok: Token | None = None) -> IRParseError:
        tok = tok or self.tok
        return _error(tok.line, tok.col, expected, tok.describe())

    def error_at(self, tok: Token, message: str) -> IRParseError:
        return IRParseError(f"line {tok.line}, column {tok.col}: {message}")

    def skip_blank_lines(self) -> None:
        while self.accept("newline") or self.accept("comment"):
            pass

    def end_of_line(self) -> None:
        if not self.accept("eof"):
            self.expect("newline", what="end of line")

    # grammar
    def parse_graph(self) -> Graph:
        self.skip_blank_lines()
        self.expect("ident", "graph", "'graph'")
        graph = Graph(self.expect("global", what="a graph name like @main").value)
        scope: dict[str, Value] = {}
        self.expect("punct", "(")
        if not self.at("punct", ")"):
            while True:
                tok = self.expect("value", what="an input like %x")
                self.expect("punct", ":")
                t = self.parse_type()
                if tok.value in scope:
                    raise self.error_at(tok, f"value %{tok.value} is defined twice")
                scope[tok.value] = graph.add_input(tok.value, t)
                if not self.accept("punct", ","):
                    break
        self.expect("punct", ")", "',' or ')'")
        self.expect("punct", "->")
        self.expect("punct", "(")
        result_types: list[tuple[Token, TensorType]] = []
        if not self.at("punct", ")"):
            while True:
                result_types.append((self.tok, self.parse_type()))
                if not self.accept("punct", ","):
                    break
        self.expect("punct", ")", "',' or ')'")
        self.expect("punct", "{")
        self.expect("newline", what="end of line")
        while True:
            self.skip_blank_lines()
            if self.at("ident", "return"):
                break
            self.parse_node(graph, scope)
        ret = self.advance()
        outputs: list[Value] = []
        if not self.at("newline") and not self.at("comment"):
            while True:
                outputs.append(self.use(scope))
                if not self.accept("punct", ","):
                    break
        self.accept("comment")
        self.expect("newline", what="end of line")
        self.skip_blank_lines()
        self.expect("punct", "}", "'}'")
        self.skip_blank_lines()
        self.expect("eof", what="end of input")
        stated = [t for _, t in result_types]
        got = [v.type for v in outputs]
        if stated != got:
            raise self.error_at(
                ret,
                f"expected return values of the header's types ({', '.join(map(str, stated))}), "
                f"got ({', '.join(map(str, got))})",
            )
        graph.set_outputs(outputs)
        return graph

    def parse_type(self) -> TensorType:
        tok = self.expect("ident", what="a type like f32[N,3]")
        if tok.text not in DTYPES:
            raise self.fail(f"a dtype ({', '.join(DTYPES)})", tok)
        self.expect("punct", "[")
        dims: list[int | str] = []
        if not self.at("punct", "]"):
            while True:
                if self.at("ident", BATCH):
                    dims.append(self.advance().text)
                else:
                    dim = self.expect("int", what=f"a dimension (an int or {BATCH})")
                    if dim.value < 0:
                        raise self.fail("a non-negative dimension", dim)
                    dims.append(dim.value)
                if not self.accept("punct", ","):
                    break
        self.expect("punct", "]", "',' or ']'")
        return TensorType(tok.text, tuple(dims))

    def use(self, scope: dict[str, Value]) -> Value:
        tok = self.expect("value", what="a value like %x")
        if tok.value not in scope:
            raise self.error_at(tok, f"undefined value %{tok.value}")
        return scope[tok.value]

    def parse_operands(self, scope: dict[str, Value]) -> list[Value]:
        self.expect("punct", "(")
        values: list[Value] = []
        if not self.at("punct", ")"):
            while True:
                values.append(self.use(scope))
                if not self.accept("punct", ","):
                    break
        self.expect("punct", ")", "',' or ')'")
        return values

    def parse_op_name(self) -> Token:
        if self.at("string"):
            return self.advance()
        return self.expect("ident", what="an op name")

    def parse_node(self, graph: Graph, scope: dict[str, Value]) -> None:
        results: list[tuple[Token, TensorType]] = []
        while True:
            tok = self.expect("value", what="a result like %1 or 'return'")
            if tok.value in scope or any(tok.value == r.value for r, _ in results):
                raise self.error_at(tok, f"value %{tok.value} is defined twice")
            self.expect("punct", ":")
            results.append((tok, self.parse_type()))
            if not self.accept("punct", ","):
                break
        self.expect("punct", "=", "',' or '='")
        op_tok = self.parse_op_name()
        op = op_tok.value
        inputs = self.parse_operands(scope)
        attrs: dict[str, Any] = {}
        region: Graph | None = None
        if self.at("punct", "{"):
            self.advance()
            if is_region_op(op) and (self.at("newline") or self.at("comment")):
                self.pos -= 1  # the region block, not attributes
            else:
                attrs = self.parse_attr_body()
        meta: dict[str, Any] = {}
        if is_region_op(op):
            self.expect("punct", "{", f"'{{' opening the {op} region")
            meta = self.parse_meta()
            self.expect("newline", what="end of line")
            region = self.parse_region(inputs, op_tok)
            self.accept("comment")
        else:
            meta = self.parse_meta()
        self.end_of_line()
        node = self.build_node(graph, op_tok, inputs, attrs, meta, results, region)
        for out in node.outputs:
            scope[out.name] = out

    def parse_attr_body(self) -> dict[str, Any]:
        """``k=v, ...}`` after an opening ``{``."""
        attrs: dict[str, Any] = {}
        if self.accept("punct", "}"):
            return attrs
        while True:
            key = self.expect("ident", what="an attribute name")
            if key.text in attrs:
                raise self.error_at(key, f"attribute {key.text} is given twice")
            self.expect("punct", "=")
            attrs[key.text] = self.parse_attr_value()
            if not self.accept("punct", ","):
                break
        self.expect("punct", "}", "',' or '}'")
        return attrs

    def parse_attr_value(self, depth: int = 0) -> Any:
        tok = self.tok
        if tok.kind in ("int", "float", "string"):
            self.advance()
            return tok.value
        if tok.kind == "ident":
            words = {
                "true": True,
                "false": False,
                "none": None,
                BATCH: BATCH,
                "inf": math.inf,
                "nan": math.nan,
            }
            if tok.text in words:
                self.advance()
                return words[tok.text]
        if self.at("punct", "["):
            if depth >= MAX_NESTING:
                raise self.error_at(tok, f"attribute value nested deeper than {MAX_NESTING} levels of [...]")
            self.advance()
            items = []
            if not self.at("punct", "]"):
                while True:
                    items.append(self.parse_attr_value(depth + 1))
                    if not self.accept("punct", ","):
                        break
            self.expect("punct", "]", "',' or ']'")
            return tuple(items)
        raise self.fail("an attribute value (number, true, false, none, string, N or [...])")

    def parse_meta(self) -> dict[str, Any]:
        tok = self.accept("comment")
        if tok is None:
            return {}
        text = tok.text[1:] if tok.text.startswith(" ") else tok.text
        text = text.rstrip()
        col = tok.col + 1 + (1 if tok.text.startswith(" ") else 0)  # where ``text`` starts
        meta: dict[str, Any] = {}
        if text.startswith('"'):
            meta["layer"], rest = self.meta_string(text, tok, col)
            if rest:
                if not rest.startswith(META_SEP):
                    raise _error(tok.line, col + len(text) - len(rest), f"{META_SEP.strip()!r}", repr(rest))
                loc_text = rest[len(META_SEP) :]
                meta["loc"] = self.meta_part(loc_text, tok, col + len(text) - len(loc_text))
        elif text.startswith("at "):
            meta["loc"] = self.meta_part(text[3:], tok, col + 3)
        elif META_SEP in text:
            layer, loc_text = text.split(META_SEP, 1)
            meta["layer"] = layer
            meta["loc"] = self.meta_part(loc_text, tok, col + len(layer) + len(META_SEP))
        elif text:
            meta["layer"] = text
        return meta

    def meta_string(self, text: str, tok: Token, col: int) -> tuple[str, str]:
        try:
            value, end = json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as exc:
            raise _error(tok.line, col + exc.pos, "a valid string", repr(text)) from None
        if not isinstance(value, str):
            raise _error(tok.line, col, "a string", repr(text[:end]))
        return value, text[end:]

    def meta_part(self, text: str, tok: Token, col: int) -> str:
        if not text.startswith('"'):
            return text
        value, rest = self.meta_string(text, tok, col)
        if rest:
            raise _error(tok.line, col + len(text) - len(rest), "end of line", repr(rest))
        return value

    def parse_region(self, operands: list[Value], owner: Token) -> Graph:
        """The chain ``op(%a, %b) {attrs} -> op -> op(%c) {attrs}`` and the closing ``}``."""
        region = Graph("region")
        scope: dict[str, Value] = {}
        for v in operands:
            # a repeated operand gets a fresh inner name; references resolve to the first
            inner = region.add_input(region.fresh_name(v.name), v.type)
            scope.setdefault(v.name, inner)
        self.skip_newlines()
        if self.at("value"):
            return self.parse_region_block(region, scope, owner)
        previous: Node | None = None
        while True:
            op_tok = self.parse_op_name()
            if is_region_op(op_tok.value):
                raise self.error_at(op_tok, f"a {owner.value} region cannot hold a nested {op_tok.value}")
            if previous is None:
                inputs = self.parse_operands(scope)
            else:
                inputs = [previous.outputs[0]]
                if self.at("punct", "("):
                    inputs += self.parse_operands(scope)
            attrs: dict[str, Any] = {}
            if self.at("punct", "{"):
                self.advance()
                attrs = self.parse_attr_body()
            previous = self.create(region, op_tok, inputs, attrs, {}, None, None, None)
            self.skip_newlines()
            if not self.accept("punct", "->"):
                break
            self.skip_newlines()
        self.expect("punct", "}", f"'->' or '}}' closing the {owner.value} region")
        region.set_outputs(previous.outputs)
        return region

    def parse_region_block(self, region: Graph, scope: dict[str, Value], owner: Token) -> Graph:
        """Typed lines ``%r0: T = op(...)``, then ``yield %a, ...`` and the closing ``}``."""
        while self.at("value"):
            line = self.tok
            self.parse_node(region, scope)
            inner = region.nodes[-1].op
            if is_region_op(inner):
                raise self.error_at(line, f"a {owner.value} region cannot hold a nested {inner}")
            self.skip_newlines()
        tok = self.expect("ident", what=f"'yield' ending the {owner.value} region")
        if tok.value != "yield":
            raise self.error_at(tok, f"expected 'yield' ending the {owner.value} region, got {tok.value!r}")
        outputs = [self.use(scope)]
        while self.accept("punct", ","):
            outputs.append(self.use(scope))
        self.expect("newline", what="end of line")
        self.skip_newlines()
        self.expect("punct", "}", f"'}}' closing the {owner.value} region")
        region.set_outputs(outputs)
        return region

    def skip_newlines(self) -> None:
        while self.accept("newline"):
            pass

    def create(
        self,
        graph: Graph,
        op_tok: Token,
        inputs: list[Value],
        attrs: dict[str, Any],
        meta: dict[str, Any],
        name: str | None,
        output_types: list[TensorType] | None,
        region: Graph | None,
    ) -> Node:
        """``graph.create_node``, with any error it raises located at the op's token."""
        try:
            return graph.create_node(
                op_tok.value, inputs, attrs, meta, name=name, output_types=output_types, region=region
            )
        except ConvforgeError as exc:
            raise self.error_at(op_tok, str(exc)) from None

    def build_node(
        self,
        graph: Graph,
        op_tok: Token,
        inputs: list[Value],
        attrs: dict[str, Any],
        meta: dict[str, Any],
        results: list[tuple[Token, TensorType]],
        region: Graph | None,
    ) -> Node:
        stated = [t for _, t in results]
        first = results[0][0].value
        if region is not None:
            inferred = [v.type for v in region.outputs]
            if stated != inferred:
                raise self.error_at(
                    results[0][0],
                    f"expected the {op_tok.value}'s result types to be its region's output types "
                    f"({', '.join(map(str, inferred))}), got ({', '.join(map(str, stated))})",
                )
            node = self.create(graph, op_tok, inputs, attrs, meta, first, stated, region)
        else:
            node = self.create(graph, op_tok, inputs, attrs, meta, first, None, None)
            inferred = [v.type for v in node.outputs]
            if stated != inferred:
                tok = results[0][0]
                if len(stated) == len(inferred):
                    tok = next(r for (r, s), i in zip(results, inferred) if s != i)
                raise self.error_at(
                    tok,
                    f"expected {op_tok.value} to produce ({', '.join(map(str, inferred))}), "
                    f"but the text states ({', '.join(map(str, stated))})",
                )
        # extra outputs are named by the op's output_names; the text may name them otherwise
        for out in node.outputs:
            graph._names.discard(out.name)
        for out, (tok, _) in zip(node.outputs, results):
            out.name = tok.value
            graph._names.add(out.name)
        return node
