"""Matched free-tier / paid-tier prompts: system prompts, cue formats, requests, pairs and named positions."""

from afprobe.scenarios._cues import CUE_FORMATS, TIERS, CueFormat, get_cue_format, register_cue_format
from afprobe.scenarios._pairs import (
    POSITION_NAMES,
    Prompt,
    ScenarioConfig,
    build_pairs,
    build_scenario,
    harmful_scenario,
    make_prompt,
)
from afprobe.scenarios._positions import (
    EDIT_STARTS,
    EditStart,
    TokenizedPrompt,
    conversation_format,
    edit_start,
    edit_starts,
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
    "EDIT_STARTS",
    "POSITION_NAMES",
    "REJECT_TAG",
    "SYSTEM_PROMPTS",
    "TIERS",
    "CueFormat",
    "EditStart",
    "Prompt",
    "Request",
    "ScenarioConfig",
    "SystemPrompt",
    "TokenizedPrompt",
    "build_pairs",
    "build_scenario",
    "builtin_requests",
    "conversation_format",
    "edit_start",
    "edit_starts",
    "get_cue_format",
    "get_system_prompt",
    "harmful_scenario",
    "load_requests",
    "make_prompt",
    "register_cue_format",
    "register_system_prompt",
    "render",
    "template_hash",
    "tokenize_prompt",
    "tokenize_prompts",
]
