"""Job descriptions (JDL): the ClassAd-like language users write jobs in.

Text to tree and back:
    parse(text) -> JdlDocument            ordered entries, keys as written, case-insensitive lookup
    write(doc) -> str                     parse(write(doc)) == doc
    parse_expression(text) -> Expr        a Requirements-style expression on its own

Tree to typed job (ALICE keys, defaults and bounds):
    JobDescription.from_document(doc)
    parse_job(text) -> JobDescription     parse + check
    load(path) -> JobDescription          read a file, parse + check
    load_document(path) -> JdlDocument    read a file, parse only

Matching:
    evaluate(expr, site_map) -> bool      the broker's test of Requirements against a site map
    JobDescription.matches(site_map)

Every problem with the input is a gridpilot.errors.JdlError carrying line, column, path and what was expected.
"""

from __future__ import annotations

from gridpilot.errors import JdlError
from gridpilot.jdl.filespecs import (
    DEFAULT_ERROR_OUTPUT,
    DEFAULT_OUTPUT_QOS,
    InputEntry,
    OutputSpec,
    parse_input_entry,
    parse_output_spec,
    parse_size,
)
from gridpilot.jdl.loader import load, load_document, parse_job
from gridpilot.jdl.model import KNOWN_KEYS, GpuRequest, JobDescription, plain_value
from gridpilot.jdl.nodes import (
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
    String,
    Value,
)
from gridpilot.jdl.parser import parse, parse_expression
from gridpilot.jdl.requirements import SiteMap, evaluate
from gridpilot.jdl.writer import write, write_expression

__all__ = [
    "DEFAULT_ERROR_OUTPUT",
    "DEFAULT_OUTPUT_QOS",
    "KNOWN_KEYS",
    "And",
    "Attribute",
    "Boolean",
    "Call",
    "Compare",
    "Entry",
    "Expr",
    "Expression",
    "GpuRequest",
    "InputEntry",
    "JdlDocument",
    "JdlError",
    "JobDescription",
    "ListValue",
    "Not",
    "Number",
    "Or",
    "OutputSpec",
    "SiteMap",
    "String",
    "Value",
    "evaluate",
    "load",
    "load_document",
    "parse",
    "parse_expression",
    "parse_input_entry",
    "parse_job",
    "parse_output_spec",
    "parse_size",
    "plain_value",
    "write",
    "write_expression",
]
