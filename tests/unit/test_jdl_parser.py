"""JDL syntax: parsing, error positions and messages, writing back, and the round trip."""

from __future__ import annotations

import pathlib
import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gridpilot.errors import GridpilotError, JdlError
from gridpilot.jdl import (
    And,
    Attribute,
    Boolean,
    Call,
    Compare,
    Entry,
    Expression,
    JdlDocument,
    ListValue,
    Not,
    Number,
    Or,
    String,
    parse,
    parse_expression,
    write,
    write_expression,
)
from gridpilot.jdl.parser import MAX_DEPTH
from support import paths

ROOT = paths.ROOT
EXAMPLES = sorted((ROOT / "examples").glob("*.jdl"))


# -- the syntax --


def test_keys_keep_spelling_order_and_are_found_in_any_case() -> None:
    doc = parse('Executable = "/bin/echo";\nttl = 60;\nCPUCores = "4";\n')
    assert doc.keys() == ("Executable", "ttl", "CPUCores")
    assert doc.get("EXECUTABLE") == String("/bin/echo")
    assert doc.get("TTL") == Number("60")
    assert "cpucores" in doc and "Price" not in doc
    assert doc.get("Price") is None
    assert [e.key for e in doc] == list(doc.keys()) and len(doc) == 3


def test_values_of_every_kind() -> None:
    doc = parse(
        'S = "a;b # not a comment // nor this";\n'
        "I = 42; N = -7; F = 1.5e3; T = TRUE; B = false;\n"
        'L = { "x", 2, true }; E = {};\n'
        "R = other.TTL > 7200;\n"
    )
    assert doc.get("S") == String("a;b # not a comment // nor this")
    assert doc.get("I") == Number("42") and Number("42").value == 42
    assert doc.get("N") == Number("-7") and Number("-7").value == -7
    assert doc.get("F") == Number("1.5e3") and Number("1.5e3").value == 1500.0
    assert doc.get("T") == Boolean(True) and doc.get("B") == Boolean(False)
    assert doc.get("L") == ListValue((String("x"), Number("2"), Boolean(True)))
    assert doc.get("E") == ListValue(())
    assert doc.get("R") == Expression(Compare(">", Attribute("TTL"), Number("7200")))


def test_string_escapes() -> None:
    doc = parse(r'A = "q\"b\\s\n\t\r\'"; B = "a\.b\d+";')
    assert doc.get("A") == String("q\"b\\s\n\t\r'")
    # Unknown escapes keep their backslash, so regular expressions survive.
    assert doc.get("B") == String(r"a\.b\d+")


def test_comments_brackets_and_optional_last_semicolon() -> None:
    text = '[\n  # hash\n  A = 1; // slashes\n  B = "x"\n]\n// trailing comment\n'
    doc = parse(text)
    assert doc.bracketed and doc.keys() == ("A", "B")
    assert parse("A = 1").keys() == ("A",)
    assert parse("").entries == () and parse("  # only a comment\n").entries == ()
    assert parse("\ufeffA = 1;").keys() == ("A",)
    crlf = 'A = 1;\r\nB = "x"; # note\r\nC = other.X == 1\r\n  && true;\r\n'
    assert parse(crlf) == parse(crlf.replace("\r\n", "\n"))


# -- what real ALICE JDLs write (tests/fixtures/jdl/alice; test_jdl_alice_corpus.py reads them all) --


def test_key_repeated_with_the_same_value_is_accepted_once() -> None:
    # AliPhysics' CPass0.jdl and nine other calibration JDLs set GUIDFILE twice; AliAnalysisAlien's merging JDLs
    # repeat Workdirectorysize. A repeat that changes nothing is dropped, in any case of the key.
    doc = parse('GUIDFILE="guid.txt";\nTTL = "28000";\nGUIDFILE="guid.txt";\nWorkdirectorysize = {"5000MB"};\n'
                'WorkDirectorySize = { "5000MB" };\nR = other.TTL > 5;\nR = (other.TTL>5);\n')
    assert doc.keys() == ("GUIDFILE", "TTL", "Workdirectorysize", "R")
    assert doc.get("guidfile") == String("guid.txt")
    assert (doc.entry("GUIDFILE").line, doc.entry("Workdirectorysize").line) == (1, 4)
    assert parse(write(doc)) == doc


@pytest.mark.parametrize(
    "text,line,first,again",
    [
        ('GUIDFILE = "guid.txt";\nTTL = 5;\nGUIDFILE = "other.txt";', 3, "line 1, column 1, to \"guid.txt\"",
         "here, at line 3, to \"other.txt\""),
        ('Workdirectorysize = {"5000MB"};\nWorkDirectorySize = "5000MB";', 2, "line 1, column 1, to { \"5000MB\" }",
         "here, at line 2, to \"5000MB\""),
        ('TTL = 3600;\n\n\nttl = "3600";', 4, "line 1, column 1, to 3600", "here, at line 4, to \"3600\""),
    ],
)
def test_key_repeated_with_a_different_value_names_both_lines(text: str, line: int, first: str, again: str) -> None:
    with pytest.raises(JdlError) as info:
        parse(text, path="job.jdl")
    e = info.value
    assert (e.path, e.line, e.column) == ("job.jdl", line, 1)
    assert "duplicate key" in e.message and first in e.message and again in e.message, e.message
    assert "only a repeat of the same value is allowed" in e.message


def test_long_values_are_cut_short_in_the_duplicate_key_message() -> None:
    with pytest.raises(JdlError) as info:
        parse('A = "' + "x" * 500 + '";\nA = "y";')
    assert len(info.value.message) < 250 and '"xxx' in info.value.message and "..." in info.value.message


def test_trailing_comma_in_a_list_is_accepted() -> None:
    # AliPhysics PWGPP/CalibMacros/CPass0/CPass0.jdl: InputFile={"LF:.../recCPass0.C",\n "LF:.../runCalibTrain.C",\n};
    doc = parse('InputFile={"LF:/a/recCPass0.C",\n           "LF:/a/runCalibTrain.C",\n};\nB = { 1, };')
    assert doc.get("InputFile") == ListValue((String("LF:/a/recCPass0.C"), String("LF:/a/runCalibTrain.C")))
    assert doc.get("B") == ListValue((Number("1"),))
    assert parse(write(doc)) == doc


@pytest.mark.parametrize(
    "text,column,message",
    [
        ("A = { , };", 7, "expected a string, number or boolean"),
        ('A = { "a",, };', 11, "expected a string, number or boolean"),
        ('A = { "a", , "b" };', 12, "expected a string, number or boolean"),
        # JAliEn takes the text between unquoted braces as one item ({a,b} is "a,b"): refused, saying how to write it.
        ("Output = {stdout@disk=1};", 11, 'list items are written in double quotes, as in { "stdout@disk=1" }'),
    ],
)
def test_lists_still_refuse_what_is_not_an_item(text: str, column: int, message: str) -> None:
    with pytest.raises(JdlError) as info:
        parse(text)
    assert message in info.value.message and (info.value.line, info.value.column) == (1, column), info.value


def test_urls_and_paths_in_strings_are_not_comments() -> None:
    doc = parse('OCDB = "raw://"; SE = "root://eos.cern.ch//eos/x#y";')
    assert doc.get("SE") == String("root://eos.cern.ch//eos/x#y")


def test_literal_in_parentheses_is_the_literal() -> None:
    assert parse("A = (5);").get("A") == Number("5")


def test_expression_keeps_source_but_compares_on_tree() -> None:
    a = parse("R = other.TTL>5&&member(other.CloseSE,\"X::Y::Z\");").get("R")
    b = parse('R = (other.TTL > 5)\n  && member( other.CloseSE , "X::Y::Z" ) ;').get("R")
    assert isinstance(a, Expression) and isinstance(b, Expression)
    assert a == b and a.source != b.source
    assert a.source == 'other.TTL>5&&member(other.CloseSE,"X::Y::Z")'


def test_operator_precedence_in_the_tree() -> None:
    t = parse_expression("!other.A == 1 || other.B < 2 && other.C")
    assert t == Or(
        (
            Compare("==", Not(Attribute("A")), Number("1")),
            And((Compare("<", Attribute("B"), Number("2")), Attribute("C"))),
        )
    )
    assert parse_expression("member(other.L, \"x\")") == Call("member", (Attribute("L"), String("x")))


def test_positions_are_recorded() -> None:
    doc = parse('\n  Executable = "/bin/echo";\nTTL =\n   60;')
    e = doc.entry("executable")
    assert e is not None and (e.line, e.column) == (2, 3)
    v = doc.get("ttl")
    assert isinstance(v, Number) and (v.line, v.column) == (4, 4)


def test_document_editing() -> None:
    doc = parse('Executable = "a"; TTL = 1;')
    doc2 = doc.with_value("ttl", Number("2")).with_value("Price", Number("3"))
    assert doc2.keys() == ("Executable", "TTL", "Price") and doc2.get("TTL") == Number("2")
    assert doc2.without("TTL").keys() == ("Executable", "Price")
    with pytest.raises(ValueError):
        JdlDocument((Entry("A", Number("1")), Entry("a", Number("2"))))


# -- errors: one clear message, at the right place --

ERRORS = [
    ('Executable = "/bin/echo', 1, 14, "unclosed string starting at line 1, column 14"),
    ('A = 1;\nB = "x\ny";', 2, 5, "unclosed string starting at line 2, column 5"),
    ('A = "ends in backslash\\', 1, 5, "unclosed string"),
    ("A = 1\nB = 2;", 1, 6, "expected ';' after the value of 'A'"),
    ("A 1;", 1, 3, "expected '=' after key 'A'"),
    ("A == 1;", 1, 3, "expected '=' after key 'A', found '=='"),
    ("= 1;", 1, 1, "expected a key"),
    ("1A = 1;", 1, 1, "invalid number '1A'"),
    ("A = ;", 1, 5, "expected a value for 'A'"),
    ("A =", 1, 4, "expected a value for 'A'"),
    ('A = { "a" "b" };', 1, 11, "is a ',' missing?"),
    ('A = { "a",', 1, 11, "unclosed list starting at line 1, column 5"),
    ("A = { other.X };", 1, 7, "expected a string, number or boolean"),
    ("A = { {1} };", 1, 7, "expected a string, number or boolean"),
    ("A = (1 ;", 1, 8, "expected ')' to close the '(' at line 1, column 5"),
    ("A = foo;", 1, 5, "unknown name 'foo'"),
    ("A = other;", 1, 10, "expected '.' after 'other'"),
    ("A = other.;", 1, 11, "expected an attribute name after 'other.'"),
    ("A = regexp(1, 2);", 1, 5, "unknown function 'regexp'"),
    ('A = member(other.X);', 1, 5, "member() takes 2 arguments"),
    ('A = member(other.X, "a", "b");', 1, 5, "member() takes 2 arguments"),
    ('A = member(other.X "a");', 1, 20, "expected ',' or ')' in the call to member"),
    ("A = 1 < 2 < 3;", 1, 11, "comparisons cannot be chained"),
    ("A = 1 & 2;", 1, 7, "expected '&&'"),
    ("A = 1 | 2;", 1, 7, "expected '||'"),
    ("A = 'single';", 1, 5, "double quotes"),
    ("A = 1; % B = 2;", 1, 8, "unexpected '%'"),
    ("A = 1;\x00", 1, 7, "unexpected character U+0000"),
    ('A = "8"; MemorySize = 8GB;', 1, 23, "invalid number '8GB'; quote sizes"),
    ("A = 1.2.3;", 1, 5, "invalid number '1.2.3'"),
    ("A = 1; a = 2;", 1, 8, "duplicate key 'a': already set as 'A' at line 1, column 1, to 1; set again here"),
    ("[ A = 1;", 1, 9, "unclosed '[' starting at line 1, column 1: expected ']'"),
    ("[ A = 1; ] B = 2;", 1, 12, "expected end of file after the closing ']'"),
    ("A = 1; [ B = 2; ]", 1, 8, "only the whole JDL may be enclosed"),
    ("A = 1 ]", 1, 7, "expected a key"),
    ("A = " + "9" * 100 + ";", 1, 5, "number too long"),
]


@pytest.mark.parametrize("text,line,column,message", ERRORS)
def test_errors_say_where_and_what(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(JdlError) as info:
        parse(text)
    e = info.value
    assert message in e.message, e.message
    assert (e.line, e.column) == (line, column), str(e)


def test_error_names_the_file_and_pickles() -> None:
    with pytest.raises(JdlError) as info:
        parse('A = "x', path="job.jdl")
    e = info.value
    assert isinstance(e, GridpilotError)
    assert str(e) == "job.jdl:1:5: unclosed string starting at line 1, column 5"
    assert e.path == "job.jdl"
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.message, e2.line, e2.column, e2.path) == (e.message, e.line, e.column, e.path)
    with pytest.raises(JdlError) as info:
        parse('A = "x')
    assert str(info.value) == "line 1, column 5: unclosed string starting at line 1, column 5"


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    for text in ("A = " + "(" * 10_000 + "1" + ")" * 10_000 + ";", "A = " + "!" * 10_000 + "true;"):
        with pytest.raises(JdlError, match="nested too deeply"):
            parse(text)
    ok = "(" * MAX_DEPTH + "true" + ")" * MAX_DEPTH
    assert parse_expression(ok) == Boolean(True)


def test_long_chains_stay_flat() -> None:
    text = " && ".join(["other.A == 1"] * 5000)
    tree = parse_expression(text)
    assert isinstance(tree, And) and len(tree.operands) == 5000
    assert parse_expression(write_expression(tree)) == tree


# -- writing back and the round trip --


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_round_trip_every_example(path: pathlib.Path) -> None:
    doc = parse(path.read_text())
    written = write(doc)
    again = parse(written)
    assert again == doc
    assert again.keys() == doc.keys()
    assert write(again) == written


def test_at_least_ten_examples() -> None:
    assert len(EXAMPLES) >= 10


def test_writer_canonical_expressions() -> None:
    cases = {
        "!(other.CE == \"A\")": '!(other.CE == "A")',
        "!!other.X": "!!other.X",
        "(other.A || other.B) && other.C": "(other.A || other.B) && other.C",
        "other.A || other.B && other.C": "other.A || (other.B && other.C)",
        "(other.A && other.B) && other.C": "(other.A && other.B) && other.C",
        "(1 < 2) == true": "(1 < 2) == true",
        'member({"a", "b"}, other.CE)': 'member({"a", "b"}, other.CE)',
    }
    for src, expected in cases.items():
        tree = parse_expression(src)
        assert write_expression(tree) == expected
        assert parse_expression(expected) == tree


def test_writer_without_source_and_with_brackets() -> None:
    doc = JdlDocument(
        (
            Entry("Executable", String('say "hi"\n')),
            Entry("Requirements", Expression(Not(Compare("==", Attribute("CE"), String("A"))))),
            Entry("Big", ListValue(tuple(String("item-%02d" % i) for i in range(10)))),
        ),
        bracketed=True,
    )
    text = write(doc)
    assert text.startswith("[\n") and text.endswith("]\n")
    assert 'Executable = "say \\"hi\\"\\n";' in text
    assert 'Requirements = !(other.CE == "A");' in text
    assert parse(text) == doc


# -- property tests --

# JDL-flavoured characters make the random text reach deeper than the parser's first error.
_JDL_CHARS = st.sampled_from(list('[]{}();,.=<>!&|"\\#/ \n\t+-eE0123456789abcXYZ_') + ["other.", "member", "true"])
_JDL_TEXT = st.lists(_JDL_CHARS, max_size=80).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=200), _JDL_TEXT))
def test_any_text_raises_only_jdl_error(text: str) -> None:
    try:
        doc = parse(text)
    except JdlError as e:
        assert e.line >= 1 and e.column >= 1 and e.message
        return
    # Whatever parses round-trips.
    assert parse(write(doc)) == doc


@settings(max_examples=200, deadline=None)
@given(_JDL_TEXT)
def test_any_expression_text_raises_only_jdl_error(text: str) -> None:
    try:
        tree = parse_expression(text)
    except JdlError:
        return
    assert parse_expression(write_expression(tree)) == tree


_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
_STRING = st.builds(String, st.text(max_size=30))
_NUMBER = st.builds(
    Number,
    st.one_of(
        st.integers(-(10**12), 10**12).map(str),
        st.floats(allow_nan=False, allow_infinity=False, width=32).map(repr).filter(lambda s: "inf" not in s),
    ),
)
_BOOLEAN = st.builds(Boolean, st.booleans())
_SCALAR = st.one_of(_STRING, _NUMBER, _BOOLEAN)
_LIST = st.builds(ListValue, st.lists(_SCALAR, max_size=6).map(tuple))


def _exprs() -> st.SearchStrategy[object]:
    leaves = st.one_of(_SCALAR, st.builds(Attribute, _KEY))

    def extend(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
        ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])
        return st.one_of(
            st.builds(Not, children),
            st.builds(And, st.lists(children, min_size=2, max_size=4).map(tuple)),
            st.builds(Or, st.lists(children, min_size=2, max_size=4).map(tuple)),
            st.builds(Compare, ops, children, children),
            st.builds(lambda a, b: Call("member", (a, b)), st.one_of(children, _LIST), children),
        )

    return st.recursive(leaves, extend, max_leaves=12)


def _not_literal(tree: object) -> bool:
    return not isinstance(tree, (String, Number, Boolean, ListValue))


_VALUE = st.one_of(_SCALAR, _LIST, _exprs().filter(_not_literal).map(Expression))  # type: ignore[arg-type]


@st.composite
def _documents(draw: st.DrawFn) -> JdlDocument:
    keys = draw(st.lists(_KEY, max_size=8, unique_by=str.lower))
    return JdlDocument(tuple(Entry(k, draw(_VALUE)) for k in keys), bracketed=draw(st.booleans()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_documents())
def test_generated_documents_round_trip(doc: JdlDocument) -> None:
    text = write(doc)
    assert parse(text) == doc
    assert parse(write(parse(text))) == parse(text)


def _fuzz_target():  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_jdl", ROOT / "tests" / "support" / "fuzz_jdl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TestOneInput


_FUZZ_ONE = _fuzz_target()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_target_on_random_bytes(data: bytes) -> None:
    # Keeps tests/support/fuzz_jdl.py working; the long run is `python tests/support/fuzz_jdl.py`.
    _FUZZ_ONE(data)
