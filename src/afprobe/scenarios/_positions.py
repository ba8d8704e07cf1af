"""Chat-templating a prompt, tokenizing it once (no double BOS) and finding its named token positions.

- ``cue``: the last token of the tier value (``True``/``False``, ``free``/``paid`` ...): it reads the cue itself;
- ``system_end``: the last token of the system message's text;
- ``user_end``: the last token of the user message's text;
- ``last``: the final prompt token, after the assistant header, where the response starts.

Positions come from character spans of the rendered text mapped through the tokenizer's offsets, so they hold for
any chat template that keeps the message text intact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from afprobe._errors import AfprobeError
from afprobe.scenarios._pairs import POSITION_NAMES, Prompt

PLAIN_FORMAT = "plain: 'System: …\\n\\nUser: …\\n\\nAssistant:'"


@dataclass(frozen=True)
class TokenizedPrompt:
    prompt: Prompt
    text: str
    input_ids: list[int]
    positions: dict[str, int]


EditStart = Literal["all", "from_cue", "generated"]
EDIT_STARTS: tuple[str, ...] = ("all", "from_cue", "generated")


def edit_start(tok: TokenizedPrompt, mode: EditStart) -> int:
    """The one rule for where a steering edit starts in a prompt (it then covers every later token, the response
    included): ``all`` at token 0, ``from_cue`` at the ``cue`` token (the last token of the tier value),
    ``generated`` at the last prompt token, where the response starts."""
    if mode == "all":
        return 0
    if mode == "from_cue":
        return tok.positions["cue"]
    if mode == "generated":
        return len(tok.input_ids) - 1
    raise AfprobeError(f"unknown edit start {mode!r} (known: {', '.join(EDIT_STARTS)})")


def edit_starts(toks: Sequence[TokenizedPrompt], mode: EditStart) -> list[int]:
    """:func:`edit_start` of every prompt."""
    return [edit_start(t, mode) for t in toks]


def conversation_format(tokenizer: Any) -> str:
    """``"chat_template"`` when the tokenizer has one, else afprobe's plain text format (base models)."""
    return "chat_template" if getattr(tokenizer, "chat_template", None) else PLAIN_FORMAT


def template_hash(tokenizer: Any) -> str:
    return hashlib.sha256(
        str(getattr(tokenizer, "chat_template", None) or PLAIN_FORMAT).encode()
    ).hexdigest()[:16]


def render(tokenizer: Any, prompt: Prompt) -> str:
    """The prompt as the model sees it, ending where the assistant's response starts (after its ``prefill``)."""
    return render_messages(tokenizer, prompt.messages()) + prompt.prefill


def render_messages(
    tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """A conversation through the chat template (or afprobe's plain format for a base model), ending with the
    assistant's generation prompt unless ``add_generation_prompt`` is false."""
    if not getattr(tokenizer, "chat_template", None):
        names = {"system": "System", "user": "User", "assistant": "Assistant"}
        text = "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages)
        return text + "\n\nAssistant:" if add_generation_prompt else text
    kw = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    try:
        return str(tokenizer.apply_chat_template(list(messages), **kw))
    except Exception:
        if not messages or messages[0]["role"] != "system" or len(messages) < 2:
            raise
        # Some templates (Gemma's) refuse a system role: fold the system text into the first user turn.
        first = {"role": "user", "content": f"{messages[0]['content']}\n\n{messages[1]['content']}"}
        return str(tokenizer.apply_chat_template([first, *messages[2:]], **kw))


def tokenize_prompt(
    tokenizer: Any, prompt: Prompt, positions: Sequence[str] = POSITION_NAMES
) -> TokenizedPrompt:
    text = render(tokenizer, prompt)
    ids, offsets = encode_rendered(tokenizer, text)
    sys_start = _find(text, prompt.system_text, 0, "system message")
    user_start = _find(text, prompt.user_text, sys_start + len(prompt.system_text), "user message")
    spans = {
        "cue": user_start + prompt.cue_span[1],
        "system_end": sys_start + len(prompt.system_text),
        "user_end": user_start + len(prompt.user_text),
    }
    found: dict[str, int] = {}
    for name in positions:
        if name == "last":
            found[name] = len(ids) - 1
        elif name in spans:
            found[name] = _token_ending_at(offsets, spans[name], name)
        else:
            raise AfprobeError(f"unknown position {name!r} (known: {', '.join(POSITION_NAMES)})")
    return TokenizedPrompt(prompt, text, ids, found)


def encode_rendered(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of a rendered conversation, tokenized once: no special tokens added,
    except a BOS the tokenizer expects and the text lacks (never a doubled BOS)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    bos = getattr(tokenizer, "bos_token", None)
    if bos and _adds_bos(tokenizer) and not text.startswith(bos):
        ids = [tokenizer.bos_token_id, *ids]
        offsets = [(0, 0), *offsets]
    return ids, offsets


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], positions: Sequence[str] = POSITION_NAMES
) -> list[TokenizedPrompt]:
    return [tokenize_prompt(tokenizer, p, positions) for p in prompts]


def _adds_bos(tokenizer: Any) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _find(text: str, part: str, start: int, what: str) -> int:
    i = text.find(part, start)
    if i < 0:
        raise AfprobeError(
            f"the chat template changed the {what} text, so afprobe cannot place named positions in it"
        )
    return i


def _token_ending_at(offsets: list[tuple[int, int]], end_char: int, name: str) -> int:
    """Index of the token that covers character ``end_char - 1`` (the last character of a span)."""
    c = end_char - 1
    for i, (a, b) in enumerate(offsets):
        if a <= c < b:
            return i
    raise AfprobeError(f"position {name!r}: no token covers character {c} of the rendered prompt")
