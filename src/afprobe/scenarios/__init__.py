"""Matched free-tier / paid-tier prompts: system prompts, cue formats, requests, pairs and named positions."""

from afprobe.scenarios._cues import CUE_FORMATS, TIERS, CueFormat, get_cue_format, register_cue_format
from afprobe.scenarios._pairs import (
    POSITION_NAMES,
    Prompt,
    ScenarioConfig,
    build_pairs,
    build_scenario,
    make_prompt,
)
from afprobe.scenarios._positions import (
    TokenizedPrompt,
    conversation_format,
    render,
    template_hash,
    tokenize_prompt,
    tokenize_prompts,
)
from afprobe.scenarios._prompts import (
    ACCEPT_TAG,
    ANSWER_FORMAT,
    REJECT_TAG,
    SYSTEM_PROMPTS,
    SystemPrompt,
    get_system_prompt,
    register_system_prompt,
)
from afprobe.scenarios._requests import Request, builtin_requests, load_requests

__all__ = [
    "ACCEPT_TAG",
    "ANSWER_FORMAT",
    "CUE_FORMATS",
    "POSITION_NAMES",
    "REJECT_TAG",
    "SYSTEM_PROMPTS",
    "TIERS",
    "CueFormat",
    "Prompt",
    "Request",
    "ScenarioConfig",
    "SystemPrompt",
    "TokenizedPrompt",
    "build_pairs",
    "build_scenario",
    "builtin_requests",
    "conversation_format",
    "get_cue_format",
    "get_system_prompt",
    "load_requests",
    "make_prompt",
    "register_cue_format",
    "register_system_prompt",
    "render",
    "template_hash",
    "tokenize_prompt",
    "tokenize_prompts",
]
