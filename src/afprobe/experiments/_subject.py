"""What the causal experiments run on: a loaded model, its backend, and the prompts built and tokenized once
(with the in-context token ids of the accept and reject prefixes that follow each)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afprobe._io import check_out_dir
from afprobe.models import Backend, LoadedModel, ModelConfig, PrefixStore, load_model, make_backend
from afprobe.scenarios import (
    ACCEPT_TAG,
    POSITION_NAMES,
    REJECT_TAG,
    Prompt,
    ScenarioConfig,
    TokenizedPrompt,
    build_scenario,
    tag_after_prefill,
    tokenize_prompts,
)


@dataclass(frozen=True)
class ScoredPrompt:
    """A tokenized prompt with the token ids of the accept and reject prefixes that follow it."""

    tok: TokenizedPrompt
    accept: tuple[int, ...]
    reject: tuple[int, ...]

    @property
    def prompt(self) -> Prompt:
        return self.tok.prompt

    @property
    def length(self) -> int:
        return len(self.tok.input_ids)


def continuation_ids(tokenizer: Any, tok: TokenizedPrompt, tag: str) -> list[int]:
    """The tokens of ``tag`` when it follows the prompt: the prompt text and the tag are tokenized together, so
    a merge across the boundary or a context-dependent split is what the model would really see."""
    base = tokenizer(tok.text, add_special_tokens=False)["input_ids"]
    full = tokenizer(tok.text + tag, add_special_tokens=False)["input_ids"]
    if list(full[: len(base)]) == list(base) and len(full) > len(base):
        return list(full[len(base) :])
    return list(tokenizer(tag, add_special_tokens=False)["input_ids"])  # the boundary merged: tag on its own


def prepare_prompts(
    tokenizer: Any, toks: Sequence[TokenizedPrompt], accept: str = ACCEPT_TAG, reject: str = REJECT_TAG
) -> list[ScoredPrompt]:
    """Attach the in-context accept and reject token ids to every tokenized prompt (after its prefill: what is
    left of each tag to write, see :func:`afprobe.scenarios.tag_after_prefill`)."""
    out = []
    for t in toks:
        prefill = getattr(t.prompt, "prefill", "")
        acc, rej = (tag_after_prefill(tag, prefill) for tag in (accept, reject))
        out.append(
            ScoredPrompt(
                t, tuple(continuation_ids(tokenizer, t, acc)), tuple(continuation_ids(tokenizer, t, rej))
            )
        )
    return out


@dataclass
class Subject:
    """A model, the backend that runs it and the scored prompts: built once (by the pipeline, or by a runner
    called alone) and handed to every causal runner. ``prefixes``: the system prompts' KV caches, computed once
    for every pass over these prompts (the clean run, each patching grid, attribution)."""

    lm: LoadedModel
    backend: Backend
    items: list[ScoredPrompt]
    prefixes: PrefixStore = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.prefixes = PrefixStore(self.backend)

    @property
    def prompts(self) -> list[Prompt]:
        return [it.prompt for it in self.items]

    @property
    def toks(self) -> list[TokenizedPrompt]:
        return [it.tok for it in self.items]

    def with_backend(self, name: str | None) -> Subject:
        """The same prompts on another backend (``None`` or the current one's name: this subject)."""
        if name is None or name == self.backend.name:
            return self
        return Subject(self.lm, make_backend(self.lm, name), self.items)


def make_subject(
    lm: LoadedModel,
    prompts: Sequence[Prompt] | Sequence[TokenizedPrompt],
    *,
    backend: str | None = None,
    positions: Sequence[str] = POSITION_NAMES,
) -> Subject:
    """Tokenize ``prompts`` (unless they already are) at ``positions`` and attach the accept/reject ids."""
    toks = (
        list(prompts)
        if all(isinstance(p, TokenizedPrompt) for p in prompts)
        else tokenize_prompts(lm.tokenizer, list(prompts), positions)  # type: ignore[arg-type]
    )
    return Subject(lm, make_backend(lm, backend), prepare_prompts(lm.tokenizer, toks))  # type: ignore[arg-type]


def build_subject(
    model: ModelConfig,
    scenario: ScenarioConfig,
    *,
    lm: LoadedModel | None = None,
    backend: str | None = None,
) -> Subject:
    """For a runner called alone: load the model (unless given), build and tokenize ``scenario``'s prompts."""
    prompts = build_scenario(scenario)
    return make_subject(lm or load_model(model), prompts, backend=backend)


class ExperimentRunner:
    """The shape every experiment runner shares (as ``CacheRunner`` and ``ProbeRunner``): ``Runner(cfg,
    progress=..., overwrite=...).run(out, subject=...)``, where ``out`` must not hold a finished result
    (``RESULT_FILE``, written last) unless ``overwrite``, and ``subject`` the prompts already built (else they are
    built from ``cfg.model`` and ``cfg.scenario``)."""

    RESULT_FILE = ""

    def __init__(self, cfg: Any, *, progress: bool = True, overwrite: bool = False):
        self.cfg = cfg
        self.progress = progress
        self.overwrite = overwrite

    def _out_dir(self, out: str | Path | None) -> Path | None:
        if out is None:
            return None
        check_out_dir(Path(out), self.RESULT_FILE, self.overwrite)
        return Path(out)

    def _subject(self, subject: Subject | None, backend: str | None = None) -> Subject:
        return (subject or build_subject(self.cfg.model, self.cfg.scenario)).with_backend(backend)
