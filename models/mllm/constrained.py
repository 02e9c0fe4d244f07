"""JSON-schema constrained decoding for the in-process transformers backend: the answer to a request with a
`json_schema` is generated so that it is a JSON document valid under that schema (what vLLM's structured outputs
do for the http backend), and it is finished within the request's `max_tokens`.

Why our own and not a library: lm-format-enforcer's transformers integration does not import with transformers 5
(`transformers.tokenization_utils` is gone), and neither it nor outlines / xgrammar bound an answer's length by
the token budget: a greedy random-weight model then writes one string or number until max_tokens and the answer
is cut, invalid. Here every step keeps only tokens after which the document can still be closed in the tokens
left (a byte-level vocabulary has a token for every character, so "characters to close" <= "tokens left" is
enough), and numbers respect minimum / maximum while they are written (IP-CIR's boxes: four numbers in [0, 1]).

How: the schema is compiled to a small grammar; a parser state is a stack of frames (a value expected, a
literal being written, string content, a number, an object's next key, an array's next item), advanced one
character at a time; alternatives (anyOf, enum, optional keys) are kept side by side as a set of stacks. The
tokens allowed after a state set are found by walking a character trie of the vocabulary (cached per state set;
string content beyond minLength is one state, so long strings hit the cache). That walk is pure Python: instant
for the tiny test / demo vocabularies, seconds per new state for a 150k-token vocabulary (a capped string has one
state per length), so a production model is best served by vLLM, whose structured outputs do the same in C++.

Decoding choices that keep every answer valid JSON but narrow what can be written: no whitespace between
tokens, properties in the schema's order (optional ones may be skipped), no escapes in strings, no exponents,
at most 6 fraction and 12 integer digits. A schema using a keyword outside the supported subset (pattern,
multipleOf, uniqueItems, prefixItems, min/maxProperties, an untyped value) raises UnsupportedSchema: the caller
then generates unconstrained and validates afterwards.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from cirflow.models.mllm.protocol import resolve_ref

# keywords that only annotate (JSON Schema 2020-12: `format` is annotation-only)
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$defs", "definitions",
                "$comment", "format", "deprecated", "readOnly", "writeOnly"}  # fmt: skip
_HANDLED = {"$ref", "anyOf", "oneOf", "allOf", "enum", "const", "type", "properties", "required",
            "additionalProperties", "items", "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum"}  # fmt: skip
MAX_FRACTION_DIGITS = 6
MAX_INTEGER_DIGITS = 12
_NUMBER_CHARS = "0123456789.-"
_CACHE_LIMIT = 20_000  # allowed-token lists kept per vocabulary table (state sets seen); cleared when full


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this decoder cannot enforce."""


@dataclass(frozen=True)
class Node:
    kind: str  # any | lit | str | num | obj | arr
    alts: tuple = ()  # any: node ids; lit: JSON texts; obj: ((key JSON text, node id, required), ...)
    lo: float | None = None  # str: minLength (as lo) / maxLength (as hi); num: minimum / maximum; arr: min/maxItems
    hi: float | None = None
    lo_excl: bool = False
    hi_excl: bool = False
    integer: bool = False
    item: int = -1  # arr: the items' node id


@dataclass(eq=False)  # identity: a grammar is a cache key (lru_caches, TokenTable) and immutable once compiled
class Grammar:
    """A compiled schema: nodes[root] is the document."""

    nodes: list[Node] = field(default_factory=list)
    root: int = 0
    vmin: dict = field(default_factory=dict, repr=False)  # node id -> fewest characters of a value (memo)

    def start(self) -> frozenset:
        return frozenset({(("V", self.root),)})

    # -------------------------------------------------------------------------------------- parsing

    def advance(self, stack: tuple, ch: str) -> list[tuple]:
        """Every stack after reading `ch` from `stack` (none: `ch` is not allowed there)."""
        if not stack:
            return []  # the document is complete: nothing may follow
        top, rest = stack[-1], stack[:-1]
        k = top[0]
        if k == "L":
            _, text, pos = top
            if text[pos] != ch:
                return []
            return [rest] if pos + 1 == len(text) else [rest + (("L", text, pos + 1),)]
        if k == "S":
            node, n = self.nodes[top[1]], top[2]
            if ch == '"':
                return [rest] if n >= node.lo else []
            if ch == "\\" or ord(ch) < 0x20 or (node.hi is not None and n >= node.hi):
                return []  # no escapes: plain characters only, which is still valid JSON
            n += 1
            if node.hi is None:
                n = min(n, int(node.lo))  # past minLength every length behaves alike: one state, cached once
            return [rest + (("S", top[1], n),)]
        if k == "N":
            node, text = self.nodes[top[1]], top[2]
            out = [rest + (("N", top[1], text + ch),)] if _number_prefix_ok(node, text + ch) else []
            if _number_complete(node, text):  # the number ended here: `ch` belongs to what follows it
                out += self.advance(rest, ch)
            return out
        if k == "V":
            node = self.nodes[top[1]]
            if node.kind == "any":
                return [s for alt in node.alts for s in self.advance(rest + (("V", alt),), ch)]
            if node.kind == "lit":
                return [s for lit in node.alts for s in self.advance(rest + (("L", lit, 0),), ch)]
            if node.kind == "str":
                return [rest + (("S", top[1], 0),)] if ch == '"' else []
            if node.kind == "num":
                return self.advance(rest + (("N", top[1], ""),), ch)
            if node.kind == "obj":
                return [rest + (("O", top[1], 0, True),)] if ch == "{" else []
            return [rest + (("A", top[1], 0, True),)] if ch == "[" else []
        if k == "O":
            _, nid, idx, first = top
            props = self.nodes[nid].alts
            out = [rest] if ch == "}" and not any(req for _, _, req in props[idx:]) else []
            for j in range(idx, len(props)):  # the next key: any optional one up to the first required one
                key, vid, req = props[j]
                lit = ("" if first else ",") + key + ":"
                if lit[0] == ch:
                    out.append(rest + (("O", nid, j + 1, False), ("V", vid), ("L", lit, 1)))
                if req:
                    break
            return out
        # "A": an array after "[" (open) or after an item
        _, nid, count, open_ = top
        node = self.nodes[nid]
        if ch == "]":
            return [rest] if count >= node.lo else []
        if open_:
            if node.hi is not None and node.hi < 1:
                return []
            return self.advance(rest + (("A", nid, 1, False), ("V", node.item)), ch)
        if ch == "," and (node.hi is None or count < node.hi):
            return [rest + (("A", nid, count + 1, False), ("V", node.item))]
        return []

    def complete(self, stack: tuple) -> bool:
        """True if the text read so far is a whole document (a trailing number may end here)."""
        return not stack or (len(stack) == 1 and stack[0][0] == "N"
                             and _number_complete(self.nodes[stack[0][1]], stack[0][2]))

    def min_close(self, stack: tuple) -> float:
        """The fewest characters that complete the document from `stack`."""
        return sum(self._frame_cost(f) for f in stack)

    # ------------------------------------------------------------------------------------- lengths

    def _frame_cost(self, f: tuple) -> float:
        return _frame_cost(self, f)

    def value_min(self, nid: int) -> float:
        return _value_min(self, nid)


def _number_prefix_ok(node: Node, text: str) -> bool:
    """Can `text` still grow into a number valid for `node`?"""
    neg = text.startswith("-")
    body = text[1:] if neg else text
    if "-" in body or (neg and node.lo is not None and node.lo >= 0):
        return False
    whole, dot, frac = body.partition(".")
    if dot and (node.integer or not whole or len(frac) > MAX_FRACTION_DIGITS):
        return False
    if not whole.isdigit() and whole != "" or len(whole) > MAX_INTEGER_DIGITS or "." in frac or \
            (frac and not frac.isdigit()):
        return False
    if len(whole) > 1 and whole[0] == "0":
        return False
    # the magnitudes still reachable: [a, b]
    if not whole:
        a, b = 0.0, math.inf
    elif dot:
        step = 10.0 ** -len(frac) if len(frac) < MAX_FRACTION_DIGITS else 0.0
        a = float(f"{whole}.{frac or '0'}")
        b = a + (step if frac else 1.0)
    elif whole == "0":
        a, b = 0.0, 0.0 if node.integer else 1.0
    else:
        a = float(whole)
        b = math.inf if len(whole) < MAX_INTEGER_DIGITS else a + (0.0 if node.integer else 1.0)
    lo, hi = (-b, -a) if neg else (a, b)
    return (node.hi is None or lo <= node.hi) and (node.lo is None or hi >= node.lo)


def _number_complete(node: Node, text: str) -> bool:
    if not _number_prefix_ok(node, text) or text in ("", "-") or text.endswith("."):
        return False
    v = float(text)
    if node.lo is not None and (v < node.lo or node.lo_excl and v == node.lo):
        return False
    return node.hi is None or not (v > node.hi or node.hi_excl and v == node.hi)


@lru_cache(maxsize=65536)
def _number_min(g: Grammar, nid: int, text: str) -> float:
    """Fewest characters that make `text` a complete number of node `nid` (breadth-first over appended chars)."""
    node, frontier = g.nodes[nid], [text]
    for depth in range(MAX_INTEGER_DIGITS + MAX_FRACTION_DIGITS + 3):
        if any(_number_complete(node, t) for t in frontier):
            return depth
        frontier = list({t + c for t in frontier for c in _NUMBER_CHARS if _number_prefix_ok(node, t + c)})
        if not frontier:
            break
    return math.inf


@lru_cache(maxsize=65536)
def _frame_cost(g: Grammar, f: tuple) -> float:
    k = f[0]
    if k == "L":
        return len(f[1]) - f[2]
    if k == "S":
        return max(0, g.nodes[f[1]].lo - f[2]) + 1
    if k == "N":
        return _number_min(g, f[1], f[2])
    if k == "V":
        return _value_min(g, f[1])
    if k == "O":
        _, nid, idx, first = f
        cost = 1  # "}"
        for key, vid, req in g.nodes[nid].alts[idx:]:
            if req:
                cost += (0 if first else 1) + len(key) + 1 + _value_min(g, vid)
                first = False
        return cost
    _, nid, count, open_ = f
    node = g.nodes[nid]
    if open_:
        need = int(node.lo)
        return 1 + (need * (_value_min(g, node.item) + 1) - 1 if need else 0)
    return 1 + max(0, int(node.lo) - count) * (1 + _value_min(g, node.item))


_IN_PROGRESS: set = set()


def _value_min(g: Grammar, nid: int) -> float:
    key = (id(g), nid)
    cached = g.vmin
    if nid in cached:
        return cached[nid]
    if key in _IN_PROGRESS:
        return math.inf  # a recursive schema: this path never closes
    _IN_PROGRESS.add(key)
    try:
        node = g.nodes[nid]
        if node.kind == "any":
            v = min(_value_min(g, a) for a in node.alts)
        elif node.kind == "lit":
            v = min(len(t) for t in node.alts)
        elif node.kind == "str":
            v = 2 + node.lo
        elif node.kind == "num":
            v = _number_min(g, nid, "")
        elif node.kind == "obj":
            v = 1 + _frame_cost(g, ("O", nid, 0, True))
        else:
            v = 1 + _frame_cost(g, ("A", nid, 0, True))
    finally:
        _IN_PROGRESS.discard(key)
    cached[nid] = v
    return v


# ------------------------------------------------------------------------------------------ compiling


def compile_schema(schema: dict) -> Grammar:
    """The grammar of JSON documents valid under `schema` (the subset pydantic's `model_json_schema()` writes)."""
    g = Grammar()
    refs: dict[str, int] = {}

    def add(node: Node) -> int:
        g.nodes.append(node)
        return len(g.nodes) - 1

    def resolve(ref: str) -> dict:
        try:
            return resolve_ref(ref, schema)  # the validator's own $ref rule: both read one schema alike
        except ValueError as e:
            raise UnsupportedSchema(str(e)) from None

    def comp(s: Any) -> int:
        if not isinstance(s, dict) or not s:
            raise UnsupportedSchema("an unconstrained value (true or {})")
        unknown = set(s) - _ANNOTATIONS - _HANDLED
        if unknown:
            raise UnsupportedSchema(f"unsupported keyword(s) {sorted(unknown)}")
        s = {k: v for k, v in s.items() if k not in _ANNOTATIONS}
        if "$ref" in s:
            ref = s["$ref"]
            if len(s) > 1:
                raise UnsupportedSchema("$ref with sibling keywords")
            if ref not in refs:
                refs[ref] = add(Node("any"))  # placeholder, so a recursive reference finds its id
                g.nodes[refs[ref]] = Node("any", (comp(resolve(ref)),))
            return refs[ref]
        if "allOf" in s:
            if len(s["allOf"]) != 1 or len(s) > 1:
                raise UnsupportedSchema("allOf with more than one schema")
            return comp(s["allOf"][0])
        for key in ("anyOf", "oneOf"):  # oneOf's exclusivity is not enforced; pydantic's alternatives are disjoint
            if key in s:
                if len(s) > 1:
                    raise UnsupportedSchema(f"{key} with sibling keywords")
                return add(Node("any", tuple(comp(a) for a in s[key])))
        if "const" in s:
            return add(Node("lit", (_dump(s["const"]),)))
        if "enum" in s:
            return add(Node("lit", tuple(_dump(v) for v in s["enum"])))
        t = s.get("type")
        if isinstance(t, list):
            return add(Node("any", tuple(comp(s | {"type": one}) for one in t)))
        if t is None:
            t = "object" if "properties" in s else "array" if "items" in s else None
        if t == "string":
            return add(Node("str", lo=s.get("minLength", 0), hi=s.get("maxLength")))
        if t in ("number", "integer"):
            lo, hi = s.get("minimum"), s.get("maximum")
            lo_x, hi_x = s.get("exclusiveMinimum"), s.get("exclusiveMaximum")
            return add(Node("num", lo=lo_x if lo_x is not None else lo, hi=hi_x if hi_x is not None else hi,
                            lo_excl=lo_x is not None, hi_excl=hi_x is not None, integer=t == "integer"))
        if t == "boolean":
            return add(Node("lit", ("true", "false")))
        if t == "null":
            return add(Node("lit", ("null",)))
        if t == "object":
            required = set(s.get("required", ()))
            nid = add(Node("obj"))
            props = tuple((_dump(name), comp(sub), name in required) for name, sub in s.get("properties", {}).items())
            if required - set(s.get("properties", {})):
                raise UnsupportedSchema(f"required properties without a schema: {sorted(required)}")
            g.nodes[nid] = Node("obj", props)
            return nid
        if t == "array":
            if "items" not in s:
                raise UnsupportedSchema("an array without `items`")
            nid = add(Node("arr"))
            g.nodes[nid] = Node("arr", lo=s.get("minItems", 0), hi=s.get("maxItems"), item=comp(s["items"]))
            return nid
        raise UnsupportedSchema(f"unsupported type {t!r}")

    g.root = comp(schema)
    return g


def _dump(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False, separators=(",", ":"))


# ------------------------------------------------------------------------------------------ vocabulary


class TokenTable:
    """Each ordinary token's text as it reads mid-answer, in a character trie, and the tokens allowed after a
    parser state set (cached). Built once per tokenizer."""

    def __init__(self, tokenizer, vocab_size: int):
        zero = tokenizer.encode("0", add_special_tokens=False)[-1]
        base = tokenizer.decode([zero])
        special = set(tokenizer.all_special_ids)
        # decoded after a "0": a sentencepiece token keeps its leading space (decoded alone, it loses it)
        self.trie: dict = {}
        for t in range(min(vocab_size, len(tokenizer))):
            if t in special:
                continue
            s = tokenizer.decode([zero, t])
            if not s.startswith(base):
                continue
            s = s[len(base):]
            if not s or "\ufffd" in s:  # part of a multi-byte character: never needed for an ASCII-safe answer
                continue
            node = self.trie
            for ch in s:
                node = node.setdefault(ch, {})
            node.setdefault("", []).append(t)  # "" holds the ids of tokens ending at this node
        self.text = {t: s for t, s in self._walk(self.trie, "")}
        self._allowed: dict = {}

    def _walk(self, node: dict, prefix: str):
        for ch, kid in node.items():
            if ch == "":
                yield from ((t, prefix) for t in kid)
            else:
                yield from self._walk(kid, prefix + ch)

    def allowed(self, g: Grammar, states: frozenset, budget: int) -> list[int]:
        """Tokens after which the document can still be closed in `budget - 1` more characters."""
        key = (g, states)  # the grammar itself, not its id: a freed grammar's id may be reused
        cand = self._allowed.get(key)
        if cand is None:
            cand = []
            self._collect(g, self.trie, list(states), cand)
            if len(self._allowed) >= _CACHE_LIMIT:
                self._allowed.clear()
            self._allowed[key] = cand
        return [t for t, cost in cand if cost <= budget - 1]

    def _collect(self, g: Grammar, node: dict, stacks: list, out: list) -> None:
        for ch, kid in node.items():
            if ch == "":
                cost = min(g.min_close(s) for s in stacks)
                out.extend((t, cost) for t in kid)
                continue
            nxt = {n for s in stacks for n in g.advance(s, ch)}
            if nxt:
                self._collect(g, kid, list(nxt), out)


# --------------------------------------------------------------------------------------- generation


class _Row:
    def __init__(self, g: Grammar, budget: int):
        self.g, self.budget = g, budget
        self.states = g.start()
        self.seen = 0
        self.done = False

    def feed(self, text: str | None) -> None:
        if text is None:  # EOS, padding or a token we never allow: nothing more to constrain
            self.done = True
            return
        states = self.states
        for ch in text:
            states = frozenset(n for s in states for n in self.g.advance(s, ch))
        self.states = states
        self.done = not states


def feasible(g: Grammar, max_tokens: int) -> bool:
    """Can the shortest valid document be written in `max_tokens` tokens (one character each, at worst)?"""
    return g.value_min(g.root) <= max_tokens


def logits_processor(table: TokenTable, rows: Sequence[tuple[Grammar, int] | None], prompt_len: int,
                     eos_ids: Sequence[int]):
    """A transformers LogitsProcessor constraining row i of a batch to grammar rows[i][0] within rows[i][1]
    new tokens (None: that row is free). Goes in `generate(logits_processor=...)`, which runs it before the
    temperature / top-p warpers, so sampling only ever sees allowed tokens."""
    import torch
    from transformers import LogitsProcessor

    class JsonSchemaLogitsProcessor(LogitsProcessor):
        def __init__(self):
            self.rows = [_Row(*r) if r is not None else None for r in rows]
            self.eos = list(eos_ids)

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            for b, row in enumerate(self.rows):
                if row is None or row.done:
                    continue
                new = input_ids[b, prompt_len + row.seen:].tolist()
                row.seen += len(new)
                for t in new:
                    row.feed(table.text.get(t))
                    if row.done:
                        break
                left = row.budget - row.seen
                if row.done or left <= 0:
                    row.done = True
                    continue
                allowed = table.allowed(row.g, row.states, left)
                if any(row.g.complete(s) for s in row.states):
                    allowed = allowed + self.eos
                if not allowed:  # cannot happen while the budget check holds; never leave a row with no token
                    row.done = True
                    continue
                keep = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
                keep[torch.tensor(allowed, device=scores.device)] = True
                scores[b] = scores[b].masked_fill(~keep, -math.inf)
            return scores

    return JsonSchemaLogitsProcessor()


__all__ = ["Grammar", "TokenTable", "UnsupportedSchema", "compile_schema", "feasible", "logits_processor"]
