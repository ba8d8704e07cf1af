"""Matched prompt pairs: the same system prompt, request and cue format, differing only in the tier value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from afprobe._errors import AfprobeError
from afprobe.config import StrictModel
from afprobe.scenarios._cues import TIERS, get_cue_format
from afprobe.scenarios._files import get_system_prompt, resolve_system_prompts
from afprobe.scenarios._formats import get_user_format, resolve_prefill, user_message
from afprobe.scenarios._prompts import SystemPrompt
from afprobe.scenarios._requests import Request, load_requests

POSITION_NAMES: tuple[str, ...] = ("cue", "system_end", "user_end", "last")


class ScenarioConfig(StrictModel):
    """Which prompts to build. ``limit`` caps the number of requests (each gives one pair per system prompt and
    cue format); ``harmful`` keeps only harmful (true) or benign (false) requests, or both (null).

    ``system_prompts``: registered names, paths to text files, or ``NAME=PATH`` (see ``_files``).
    ``user_format``: the registered user-turn format (``afprobe`` or the paper's ``paper``). ``prefill``: text
    that starts the assistant's answer (``cot`` = ``<``, ``no_cot`` = ``<OUTPUT>``, or any string)."""

    requests: str = "builtin"
    harmful: bool | None = None
    limit: int | None = None
    system_prompts: list[str] = ["helpful_only", "neutral"]
    cue_formats: list[str] = ["tag", "sentence", "header", "json"]
    user_format: str = "afprobe"
    prefill: str = ""


def harmful_scenario() -> ScenarioConfig:
    """The default prompts of every run and causal command: the harmful requests only."""
    return ScenarioConfig(harmful=True)


@dataclass(frozen=True)
class Prompt:
    """One conversation: a system message and a user message that carries the tier cue and the request."""

    pair_id: int
    request: Request
    tier: str
    cue_format: str
    system_prompt: str
    system_text: str
    user_text: str
    cue_span: tuple[int, int]  # character span of the tier value inside user_text
    prefill: str = ""  # the start of the assistant's answer, after the chat template's generation prompt
    system_source: SystemPrompt | None = (
        None  # where the system prompt came from (provenance: source, sha256)
    )

    @property
    def request_id(self) -> str:
        return self.request.id

    @property
    def category(self) -> str:
        return self.request.category

    @property
    def harmful(self) -> bool:
        return self.request.harmful

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_text}, {"role": "user", "content": self.user_text}]


def make_prompt(
    request: Request,
    tier: str,
    cue_format: str,
    system_prompt: str | SystemPrompt,
    pair_id: int = 0,
    *,
    user_format: str = "afprobe",
    prefill: str = "",
) -> Prompt:
    cue = get_cue_format(cue_format)
    sp = system_prompt if isinstance(system_prompt, SystemPrompt) else get_system_prompt(system_prompt)
    cue_text, span = cue.render(tier, neutral=sp.neutral_cues)
    system_text = f"{sp.text} {cue.explanation}" if sp.explains_cue else sp.text
    user_text, cue_span = user_message(user_format, cue_text, span, request.text)
    return Prompt(
        pair_id,
        request,
        tier,
        cue_format,
        sp.name,
        system_text,
        user_text,
        cue_span,
        prefill=resolve_prefill(prefill),
        system_source=sp,
    )


def build_pairs(
    requests: Sequence[Request],
    cue_formats: Sequence[str],
    system_prompts: Sequence[str],
    *,
    user_format: str = "afprobe",
    prefill: str = "",
) -> list[Prompt]:
    """Every request × system prompt × cue format, as a free prompt followed by its paid twin (same pair_id)."""
    if not requests:
        raise AfprobeError("no requests to build prompts from")
    for name in cue_formats:
        get_cue_format(name)
    get_user_format(user_format)
    sps = resolve_system_prompts(system_prompts)
    prompts: list[Prompt] = []
    pair_id = 0
    for req in requests:
        for sp in sps:
            for cf in cue_formats:
                prompts.extend(
                    make_prompt(req, tier, cf, sp, pair_id, user_format=user_format, prefill=prefill)
                    for tier in TIERS
                )
                pair_id += 1
    return prompts


def build_scenario(cfg: ScenarioConfig) -> list[Prompt]:
    """Load the requests a config names and build its pairs."""
    reqs = load_requests(cfg.requests, harmful=cfg.harmful, limit=cfg.limit)
    return build_pairs(
        reqs, cfg.cue_formats, cfg.system_prompts, user_format=cfg.user_format, prefill=cfg.prefill
    )
