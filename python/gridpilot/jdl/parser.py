"""JDL text to a JdlDocument, and Requirements-style expression text to an expression tree.

Grammar (ClassAd-like, as ALICE writes it):

    document   := '[' entries ']' | entries
    entries    := ( key '=' value ';' )*          the last ';' may be left out
    value      := or_expr                         a lone literal or list is stored as itself
    or_expr    := and_expr ( '||' and_expr )*
    and_expr   := comparison ( '&&' comparison )*
    comparison := unary ( ('=='|'!='|'<'|'<='|'>'|'>=') unary )?
    unary      := '!' unary | primary
    primary    := string | number | true | false | list | '(' or_expr ')' | other '.' key | name '(' args ')'
    list       := '{' [ literal ( ',' literal )* [ ',' ] ] '}'     a trailing ',' is allowed, as ALICE allows it

A key given twice must have the same value both times (the repeat is dropped); keys are case-insensitive.

Every error is a JdlError with the line and column of the offending token and what was expected there.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Optional

from gridpilot.errors import JdlError
from gridpilot.jdl.lexer import EOF, IDENT, NUMBER, STRING, Token, tokenize
from gridpilot.jdl.nodes import (
    COMPARISON_OPERATORS,
    FUNCTIONS,
    And,
    Attribute,
    Boolean,
    Call,
    Compare,
    Entry,
    Expr,
    Expression,
    JdlDocument,
    ListValue,
    Not,
    Number,
    Or,
    Scalar,
    String,
    Value,
)
from gridpilot.jdl.writer import write_value

#: Deepest nesting of parentheses, `!` and calls in one expression; deeper input is refused, not a RecursionError.
MAX_DEPTH = 64

#: How much of a value an error message quotes.
_SHOWN_CHARS = 40


def _shown(value: Value) -> str:
    """A value as an error message quotes it: its JDL text, cut short."""
    text = " ".join(write_value(value).split())
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens: Iterator[Token] = tokenize(text)
        self.tok: Token = next(self._tokens)
        self.prev: Optional[Token] = None
        self.depth = 0

    # -- helpers --

    def advance(self) -> Token:
        t = self.tok
        self.prev = t
        if t.kind != EOF:
            self.tok = next(self._tokens)
        return t

    def error(self, message: str, tok: Optional[Token] = None) -> JdlError:
        t = self.tok if tok is None else tok
        return JdlError(message, t.line, t.column)

    def expected(self, what: str) -> JdlError:
        return self.error(f"expected {what}, found {self.tok.describe()}")

    def is_word(self, word: str) -> bool:
        return self.tok.kind == IDENT and self.tok.text.lower() == word

    # -- document --

    def document(self) -> JdlDocument:
        bracketed = False
        open_tok = self.tok
        if self.tok.kind == "[":
            bracketed = True
            self.advance()
        entries: List[Entry] = []
        seen: Dict[str, Entry] = {}
        while True:
            if self.tok.kind == EOF:
                if bracketed:
                    raise self.error(
                        f"unclosed '[' starting at line {open_tok.line}, column {open_tok.column}: expected ']'"
                    )
                break
            if bracketed and self.tok.kind == "]":
                self.advance()
                if self.tok.kind != EOF:
                    raise self.expected("end of file after the closing ']'")
                break
            entry = self.entry()
            first = seen.get(entry.key.lower())
            if first is not None:
                # ALICE's own JDLs repeat keys (GUIDFILE, Workdirectorysize in generated merge JDLs): a repeat of
                # the same value changes nothing and is dropped. A different value is refused: JAliEn would keep
                # the last one while its lookups return the first, so which one the job gets is anyone's guess.
                if entry.value == first.value:
                    continue
                raise JdlError(
                    f"duplicate key {entry.key!r}: already set as {first.key!r} at line {first.line}, column "
                    f"{first.column}, to {_shown(first.value)}; set again here, at line {entry.line}, to "
                    f"{_shown(entry.value)} (keys are case-insensitive; only a repeat of the same value is allowed)",
                    entry.line,
                    entry.column,
                )
            seen[entry.key.lower()] = entry
            entries.append(entry)
        return JdlDocument(tuple(entries), bracketed)

    def entry(self) -> Entry:
        key_tok = self.tok
        if key_tok.kind != IDENT:
            if key_tok.kind == "[":
                raise self.error("unexpected '[': only the whole JDL may be enclosed in [ ... ]")
            raise self.expected("a key (letters, digits and '_', starting with a letter or '_')")
        self.advance()
        if self.tok.kind != "=":
            raise self.expected(f"'=' after key {key_tok.text!r}")
        self.advance()
        if self.tok.kind in (";", EOF, "]"):
            raise self.expected(f"a value for {key_tok.text!r}")
        value = self.value()
        if self.tok.kind == ";":
            self.advance()
        elif not (self.tok.kind == EOF or self.tok.kind == "]"):
            # Point just past the value: a missing ';' is usually at the end of that line, not at the next token.
            assert self.prev is not None
            p = self.prev
            raise JdlError(
                f"expected ';' after the value of {key_tok.text!r}, found {self.tok.describe()}",
                p.line,
                p.column + (p.end - p.offset),
            )
        return Entry(key_tok.text, value, key_tok.line, key_tok.column)

    def value(self) -> Value:
        first = self.tok
        tree = self.or_expr()
        if isinstance(tree, (String, Number, Boolean, ListValue)):
            return tree
        assert self.prev is not None
        source = self.text[first.offset : self.prev.end]
        return Expression(tree, source, first.line, first.column)

    # -- expressions --

    def or_expr(self) -> Expr:
        first = self.tok
        operands = [self.and_expr()]
        while self.tok.kind == "||":
            self.advance()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands), first.line, first.column)

    def and_expr(self) -> Expr:
        first = self.tok
        operands = [self.comparison()]
        while self.tok.kind == "&&":
            self.advance()
            operands.append(self.comparison())
        return operands[0] if len(operands) == 1 else And(tuple(operands), first.line, first.column)

    def comparison(self) -> Expr:
        first = self.tok
        left = self.unary()
        if self.tok.kind not in COMPARISON_OPERATORS:
            return left
        op = self.advance().text
        right = self.unary()
        if self.tok.kind in COMPARISON_OPERATORS:
            raise self.error(f"comparisons cannot be chained ({op} then {self.tok.text}); add parentheses")
        return Compare(op, left, right, first.line, first.column)

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested too deeply (more than {MAX_DEPTH} levels)")

    def unary(self) -> Expr:
        if self.tok.kind != "!":
            return self.primary()
        t = self.advance()
        self.enter()
        operand = self.unary()
        self.depth -= 1
        return Not(operand, t.line, t.column)

    def primary(self) -> Expr:
        t = self.tok
        if t.kind in (STRING, NUMBER) or self.is_word("true") or self.is_word("false"):
            return self.literal()
        if t.kind == "{":
            return self.list_value()
        if t.kind == "(":
            self.advance()
            self.enter()
            inner = self.or_expr()
            self.depth -= 1
            if self.tok.kind != ")":
                raise self.expected(f"')' to close the '(' at line {t.line}, column {t.column}")
            self.advance()
            return inner
        if t.kind == IDENT:
            self.advance()
            if t.text.lower() == "other":
                if self.tok.kind != ".":
                    raise self.expected("'.' after 'other' (as in other.TTL)")
                self.advance()
                if self.tok.kind != IDENT:
                    raise self.expected("an attribute name after 'other.'")
                return Attribute(self.advance().text, t.line, t.column)
            if self.tok.kind == "(":
                return self.call(t)
            raise self.error(
                f"unknown name {t.text!r}: expected other.<Key>, true, false, a string, a number, "
                f"a list or a function call such as member(other.CloseSE, \"ALICE::CERN::EOS\")",
                t,
            )
        if t.kind == EOF:
            raise self.error("expected a value or expression, found end of file")
        raise self.expected("a value or expression")

    def call(self, name: Token) -> Expr:
        arity = FUNCTIONS.get(name.text.lower())
        if arity is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"unknown function {name.text!r}; known functions: {known}", name)
        open_tok = self.advance()  # '('
        self.enter()
        args: List[Expr] = []
        if self.tok.kind != ")":
            args.append(self.or_expr())
            while self.tok.kind == ",":
                self.advance()
                args.append(self.or_expr())
        if self.tok.kind != ")":
            where = f"line {open_tok.line}, column {open_tok.column}"
            raise self.expected(f"',' or ')' in the call to {name.text} at {where}")
        self.advance()
        self.depth -= 1
        if len(args) != arity:
            raise self.error(f"{name.text}() takes {arity} arguments (a list and a value), got {len(args)}", name)
        return Call(name.text, tuple(args), name.line, name.column)

    def literal(self) -> Scalar:
        t = self.advance()
        if t.kind == STRING:
            return String(t.text, t.line, t.column)
        if t.kind == NUMBER:
            return Number(t.text, t.line, t.column)
        return Boolean(t.text.lower() == "true", t.line, t.column)

    def list_value(self) -> ListValue:
        open_tok = self.advance()
        items: List[Scalar] = []
        where = f"the list starting at line {open_tok.line}, column {open_tok.column}"
        if self.tok.kind != "}":
            while True:
                if self.tok.kind == EOF:
                    raise self.error(f"unclosed list starting at line {open_tok.line}, column {open_tok.column}")
                if not (self.tok.kind in (STRING, NUMBER) or self.is_word("true") or self.is_word("false")):
                    # JAliEn reads an unquoted {stdout@disk=1} as one item holding all the text between the
                    # braces ({a,b} too); refused here, with the way to write it that means the same everywhere.
                    if self.tok.kind == IDENT:
                        raise self.error(
                            f"expected a string, number or boolean in {where}, found {self.tok.describe()}; "
                            f"list items are written in double quotes, as in {{ \"stdout@disk=1\" }}"
                        )
                    raise self.expected(f"a string, number or boolean in {where}")
                items.append(self.literal())
                if self.tok.kind == ",":
                    self.advance()
                    if self.tok.kind == "}":  # a trailing comma, as in AliPhysics' CPass0.jdl InputFile
                        break
                    continue
                if self.tok.kind == "}":
                    break
                if self.tok.kind == EOF:
                    raise self.error(f"unclosed list starting at line {open_tok.line}, column {open_tok.column}")
                hint = "; is a ',' missing?" if self.tok.kind in (STRING, NUMBER) else ""
                raise self.error(f"expected ',' or '}}' in {where}, found {self.tok.describe()}{hint}")
        self.advance()
        return ListValue(tuple(items), open_tok.line, open_tok.column)


def parse(text: str, path: Optional[str] = None) -> JdlDocument:
    """Parse JDL text into a JdlDocument. Raises JdlError (naming `path` when given), never anything else."""
    try:
        return _Parser(text).document()
    except JdlError as e:
        raise (e.with_path(path) if path is not None else e) from None


def parse_expression(text: str, path: Optional[str] = None) -> Expr:
    """Parse a Requirements-style expression such as `other.TTL > 7200 && member(other.CloseSE, "X::Y::Z")`."""
    try:
        p = _Parser(text)
        if p.tok.kind == EOF:
            raise p.error("expected an expression, found end of file")
        tree = p.or_expr()
        if p.tok.kind != EOF:
            raise p.expected("'&&', '||', a comparison or the end of the expression")
        return tree
    except JdlError as e:
        raise (e.with_path(path) if path is not None else e) from None

