"""The metric names a PromQL expression reads, and the names Conclave exports.

Dashboards and alert rules name metrics as plain strings, so a renamed or
never-exported metric only shows up as an empty panel or an alert that can never
fire. These helpers let the tests compare every name in every query with what the
servers' registries actually hold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

# Grafana's template variables ($cell, ${datasource}, ${node:regex}, [[legacy]]):
# replaced by a plain number before tokenising; they only ever stand for values.
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]")

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>0[xX][0-9a-fA-F]+
      |(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[{}()\[\],@])
  | (?P<op>==|!=|=~|!~|<=|>=|[-+*/%^<>=])
    """,
    re.VERBOSE,
)

# Keywords that take a parenthesised list of label names, not of expressions.
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_KEYWORDS = _LABEL_LIST_KEYWORDS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"}
    | {"bottomk", "topk", "quantile", "limitk", "limit_ratio"}
)
FUNCTIONS = _AGGREGATIONS | frozenset(
    """abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month
    day_of_week day_of_year days_in_month delta deriv exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace ln log2
    log10 minute month predict_linear rate resets round scalar sgn sort sort_desc
    sort_by_label sort_by_label_desc sqrt time timestamp vector year avg_over_time
    min_over_time max_over_time sum_over_time count_over_time quantile_over_time
    stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
    acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg rad pi start end""".split()
)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> Iterator[Token]:
    """PromQL tokens, without spaces and comments; raises ValueError on a character
    that starts no token."""
    text = _GRAFANA_VARIABLE.sub("0", expr)
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot tokenise {text[position:]!r} in {expr!r}")
        position = match.end()
        kind = match.lastgroup
        assert kind is not None
        if kind not in ("space", "comment"):
            yield Token(kind, match.group())


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` selects: identifiers outside label matchers `{...}`,
    range brackets `[...]` and `by (...)`-style label lists, that are neither
    keywords nor function names. An identifier called like a function that PromQL
    does not know raises ValueError, so a typo cannot pass as a metric."""
    tokens = list(tokenize(expr))
    names: set[str] = set()
    depth = {"{": 0, "[": 0, "(": 0}
    closing = {"}": "{", "]": "[", ")": "("}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        following = tokens[index + 1].text if index + 1 < len(tokens) else ""
        if token.text in depth:
            depth[token.text] += 1
        elif token.text in closing:
            depth[closing[token.text]] -= 1
            if depth[closing[token.text]] < 0:
                raise ValueError(f"unbalanced {token.text!r} in {expr!r}")
        elif token.kind == "ident" and not depth["{"] and not depth["["]:
            keyword = token.text.lower()
            if keyword in _LABEL_LIST_KEYWORDS and following == "(":
                index = _after_label_list(tokens, index + 1, expr)
                continue
            if keyword in _KEYWORDS:
                pass
            elif keyword in _AGGREGATIONS and following.lower() in ("(", "by", "without"):
                pass  # sum(...), sum by (...) (...); aggregations ignore case
            elif following == "(":
                if token.text not in FUNCTIONS:
                    raise ValueError(f"unknown PromQL function {token.text!r} in {expr!r}")
            else:
                names.add(token.text)
        index += 1
    if any(depth.values()):
        raise ValueError(f"unclosed bracket in {expr!r}")
    return names


def _after_label_list(tokens: list[Token], opening: int, expr: str) -> int:
    """The index after the `)` that closes the label list opened at `opening`."""
    for index in range(opening + 1, len(tokens)):
        if tokens[index].text == ")":
            return index + 1
        if tokens[index].kind not in ("ident", "string") and tokens[index].text != ",":
            raise ValueError(f"not a label list after {tokens[opening - 1].text!r} in {expr!r}")
    raise ValueError(f"unclosed label list in {expr!r}")


_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S)


def variable_query_names(query: str) -> set[str]:
    """Metric names of a Grafana Prometheus variable query; only `label_values`
    is used in our dashboards, anything else is refused."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        raise ValueError(f"unsupported variable query {query!r} (use label_values)")
    return metric_names(match["expr"]) if match["expr"] else set()


# Sample names per metric family type, from the family's name as the client
# library reports it (a counter's family name has no `_total`).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def sample_names(registries: Iterable[CollectorRegistry]) -> set[str]:
    """Every series name the registries can expose, also for labelled metrics that
    have no child yet (their families are collected without samples)."""
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def unknown_names(exprs: Iterable[str], known: set[str]) -> dict[str, set[str]]:
    """For each expression that names metrics outside `known`: those names."""
    found: dict[str, set[str]] = {}
    for expr in exprs:
        unknown = metric_names(expr) - known
        if unknown:
            found[expr] = unknown
    return found
