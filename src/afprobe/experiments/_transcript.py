"""Transcripts of scratchpad reasoning: the output taken after the last reasoning block, the decision tag, and
the token spans (scratchpad, output, decision tag, first output token) of the whole conversation as re-rendered
through the chat template, so that the activation cache can replay it (``afprobe.activations``).

Tags are matched case-insensitively; an unclosed ``<SCRATCHPAD_REASONING>`` runs to the end of its turn, and an
unclosed ``<OUTPUT>`` to the end of the text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from afprobe._errors import AfprobeError
from afprobe._io import atomic_write_text
from afprobe.scenarios import ACCEPT_TAG, REJECT_TAG, encode_rendered, render_messages

SCRATCHPAD_OPEN, SCRATCHPAD_CLOSE = "<SCRATCHPAD_REASONING>", "</SCRATCHPAD_REASONING>"
OUTPUT_OPEN, OUTPUT_CLOSE = "<OUTPUT>", "</OUTPUT>"
SPAN_NAMES: tuple[str, ...] = ("scratchpad", "output", "decision", "output_first")
_BLOCK = re.compile(r"<SCRATCHPAD_REASONING>(.*?)(?:</SCRATCHPAD_REASONING>|$)", re.DOTALL | re.IGNORECASE)
_CLOSE = re.compile(re.escape(SCRATCHPAD_CLOSE), re.IGNORECASE)
_OUT = re.compile(r"<OUTPUT>", re.IGNORECASE)
_OUT_END = re.compile(r"</OUTPUT>", re.IGNORECASE)

Span = tuple[int, int]  # [start, end) in characters or tokens


def scratchpad_blocks(text: str) -> list[Span]:
    """Character spans of the contents of every reasoning block in ``text``."""
    return [m.span(1) for m in _BLOCK.finditer(text)]


def output_span(text: str) -> Span | None:
    """The final output of an assistant turn: after the last ``</SCRATCHPAD_REASONING>`` (the whole text when
    there is none), inside ``<OUTPUT>`` tags when they are there; None when the turn is still reasoning (a
    reasoning block is open) and no ``<OUTPUT>`` was written."""
    closes = list(_CLOSE.finditer(text))
    start = closes[-1].end() if closes else 0
    if not closes and _BLOCK.search(text):
        opened = _OUT.search(text)
        if opened is None:
            return None
        start = opened.start()
    tail = text[start:]
    opened = _OUT.search(tail)
    if opened is None:
        if _BLOCK.search(tail):
            return None
        a = start + len(tail) - len(tail.lstrip())
        return (a, start + len(tail.rstrip()))
    a = start + opened.end()
    end = _OUT_END.search(text, a)
    b = end.start() if end else len(text)
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return (a, b)


def has_output(text: str) -> bool:
    """Whether an assistant turn wrote an ``<OUTPUT>`` block (else the ``<NEXT/>`` loop goes on)."""
    return _OUT.search(text) is not None


def decision_span(text: str, out: Span | None) -> tuple[str | None, Span | None]:
    """The first accept or reject tag inside the output: (``accepted`` | ``rejected`` | None, its span)."""
    if out is None:
        return None, None
    seg = text[out[0] : out[1]]
    found = [(seg.find(t), t, v) for t, v in ((ACCEPT_TAG, "accepted"), (REJECT_TAG, "rejected"))]
    hits = sorted((i, t, v) for i, t, v in found if i >= 0)
    if not hits:
        return None, None
    i, t, v = hits[0]
    return v, (out[0] + i, out[0] + i + len(t))


@dataclass
class Transcript:
    """One sampled conversation: the prompt's identity, the messages (system, user, then the assistant's turns
    with ``<NEXT/>`` between them), and what was read from it."""

    prompt_index: int
    sample: int
    seed: int
    pair_id: int
    request_id: str
    tier: str
    cue_format: str
    system_prompt: str
    category: str
    harmful: bool
    request_text: str
    messages: list[dict[str, str]]
    turns: int
    finished: bool  # an output was written within the turn budget
    scratchpad: str = ""
    output: str = ""
    decision: str | None = None
    verdict: str = "unclear"
    judge: dict[str, Any] | None = None
    text: str = ""
    input_ids: list[int] = field(default_factory=list)
    spans: dict[str, list[list[int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transcript:
        return cls(**d)


def assistant_turns(t: Transcript) -> list[str]:
    return [m["content"] for m in t.messages if m["role"] == "assistant"]


def read_transcript(t: Transcript) -> None:
    """Fill ``scratchpad``, ``output`` and ``decision`` from the assistant turns."""
    turns = assistant_turns(t)
    t.scratchpad = "\n\n".join(turn[a:b].strip() for turn in turns for a, b in scratchpad_blocks(turn))
    last = turns[-1] if turns else ""
    out = output_span(last)
    t.output = last[out[0] : out[1]] if out else ""
    t.decision = decision_span(last, out)[0]


def locate(tokenizer: Any, t: Transcript) -> None:
    """Render the whole conversation (no generation prompt), tokenize it once, and record the token spans of the
    scratchpad blocks, the output, the decision tag and the first output token (``t.spans``, [start, end))."""
    t.text = render_messages(tokenizer, t.messages, add_generation_prompt=False)
    ids, offsets = encode_rendered(tokenizer, t.text)
    t.input_ids = ids
    chars: dict[str, list[Span]] = {name: [] for name in SPAN_NAMES}
    cursor = 0
    last = len(t.messages) - 1
    for k, m in enumerate(t.messages):
        at = t.text.find(m["content"], cursor)
        if at < 0:
            raise AfprobeError(
                "the chat template changed a message of the transcript; cannot place its spans"
            )
        cursor = at + len(m["content"])
        if m["role"] != "assistant":
            continue
        chars["scratchpad"] += [(at + a, at + b) for a, b in scratchpad_blocks(m["content"]) if b > a]
        if k == last:
            out = output_span(m["content"])
            if out is not None and out[1] > out[0]:
                chars["output"].append((at + out[0], at + out[1]))
                chars["output_first"].append((at + out[0], at + out[0] + 1))
                _, dec = decision_span(m["content"], out)
                if dec is not None:
                    chars["decision"].append((at + dec[0], at + dec[1]))
    t.spans = {name: [list(s) for s in _tokens(offsets, spans)] for name, spans in chars.items()}


def _tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[Span]:
    """Token spans covering each character span (every token that overlaps it)."""
    out = []
    for a, b in spans:
        hit = [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
        if hit:
            out.append((hit[0], hit[-1] + 1))
    return out


def write_transcripts(path: Path, transcripts: Sequence[Transcript]) -> None:
    """JSONL, one transcript per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in transcripts))


def read_transcripts(path: str | Path) -> list[Transcript]:
    p = Path(path)
    if not p.is_file():
        raise AfprobeError(f"transcript file {p} does not exist")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(Transcript.from_json(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise AfprobeError(f"{p}:{n}: not a transcript ({e})") from None
    if not out:
        raise AfprobeError(f"transcript file {p} is empty")
    return out
