"""Scratchpad mode: the paper's setting run as the paper ran it.

Each prompt (its answer prefilled, ``<`` with chain of thought) is sampled ``samples`` times at ``temperature``,
sample ``k`` of prompt ``i`` in turn ``t`` from its own seed (:func:`sample_seed`), so a transcript does not depend
on the batch or on the other prompts. The model reasons in ``<SCRATCHPAD_REASONING>`` blocks and then writes
``<OUTPUT>``; a turn that ends without an ``<OUTPUT>`` gets ``<NEXT/>`` as the next user message and the model goes
on, for at most ``max_turns`` assistant turns. The output is what follows the last ``</SCRATCHPAD_REASONING>``
(see ``_transcript``); a classifier (``prefix`` by default) labels it accepted / rejected / unclear, and the
alignment-faking judge (``judge``) reads the reasoning. Compliance and alignment-faking rates are per prompt
(over its samples); their free − paid gaps carry bootstrap CIs over requests, by system prompt and cue format.
Every batch shares the system prompt's KV cache (computed once per system prompt for the whole run).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from afprobe._io import write_csv, write_json
from afprobe._progress import progress_bar
from afprobe.config import StrictModel
from afprobe.experiments._compliance import VERDICTS, get_classifier, metric_summary
from afprobe.experiments._judges import AlignmentFakingJudge, JudgeConfig, make_judge
from afprobe.experiments._subject import ExperimentRunner, Subject
from afprobe.experiments._transcript import Transcript, has_output, locate, read_transcript, write_transcripts
from afprobe.models import Backend, ModelConfig, PrefixStore, generate
from afprobe.scenarios import (
    NEXT_TAG,
    ScenarioConfig,
    TokenizedPrompt,
    encode_rendered,
    render_messages,
    system_prompt_provenance,
)

SCRATCHPAD_FILE = "scratchpad.json"
TRANSCRIPTS_FILE = "transcripts.jsonl"
SCRATCHPAD_SCHEMA = "afprobe.scratchpad/1"


def paper_scenario() -> ScenarioConfig:
    """The paper's prompts in this project's words: the long scratchpad prompt and its no-training control, the
    ``tag`` cue, the paper's user-turn wrapper and suffix, ``<`` prefilled, harmful requests."""
    return ScenarioConfig(
        harmful=True,
        system_prompts=["helpful_only_scratchpad", "neutral_scratchpad"],
        cue_formats=["tag"],
        user_format="paper",
        prefill="cot",
    )


class ScratchpadConfig(StrictModel):
    """``samples`` per prompt at ``temperature`` (greedy when ``sample`` is false: then one sample is enough);
    ``max_new_tokens`` per assistant turn, ``max_turns`` assistant turns (the ``<NEXT/>`` loop); ``classifier``:
    the registered response classifier applied to each output; ``judge``: the alignment-faking judge."""

    samples: int = Field(default=4, ge=1)
    sample: bool = True
    temperature: float = Field(default=1.0, gt=0)
    max_new_tokens: int = Field(default=1024, ge=1)
    max_turns: int = Field(default=4, ge=1)
    batch_size: int = Field(default=8, ge=1)
    share_prefix: bool = True
    classifier: str = "prefix"
    n_bootstrap: int = Field(default=1000, ge=100)
    ci: float = Field(default=0.95, gt=0, lt=1)
    judge: JudgeConfig = JudgeConfig()


class ScratchpadRunConfig(StrictModel):
    """Everything the scratchpad stage needs when run alone."""

    model: ModelConfig = ModelConfig()
    scenario: ScenarioConfig = Field(default_factory=paper_scenario)
    scratchpad: ScratchpadConfig = ScratchpadConfig()
    seed: int = 0


def sample_seed(seed: int, prompt: int, sample: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` of sample ``sample`` of prompt ``prompt``."""
    return ((((seed * 1_000_003 + prompt) * 10_007 + sample) * 101 + turn) * 2_654_435_761) % (2**63 - 1)


def sample_transcripts(
    backend: Backend,
    toks: Sequence[TokenizedPrompt],
    cfg: ScratchpadConfig,
    *,
    seed: int = 0,
    prefixes: PrefixStore | None = None,
    progress: bool = False,
) -> list[Transcript]:
    """``cfg.samples`` transcripts of every prompt, through the ``<NEXT/>`` loop (prompt-major order)."""
    tok = backend.lm.tokenizer
    store = prefixes if prefixes is not None else PrefixStore(backend)
    n_samples = cfg.samples if cfg.sample else 1
    jobs = [(i, k) for i in range(len(toks)) for k in range(n_samples)]
    messages = {j: list(toks[i].prompt.messages()) for j, (i, _) in enumerate(jobs)}
    turns = dict.fromkeys(range(len(jobs)), 0)
    active = list(range(len(jobs)))
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task("scratchpad turns", total=cfg.max_turns)
        for turn in range(cfg.max_turns):
            if not active:
                break
            rows = [
                toks[jobs[j][0]] if turn == 0 else _continuation(tok, toks[jobs[j][0]], messages[j])
                for j in active
            ]
            new = generate(
                backend,
                rows,
                max_new_tokens=cfg.max_new_tokens,
                sample=cfg.sample,
                temperature=cfg.temperature,
                seeds=[sample_seed(seed, jobs[j][0], jobs[j][1], turn) for j in active],
                batch_size=cfg.batch_size,
                share_prefix=cfg.share_prefix,
                prefixes=store,
                engine="hf",
            )
            still = []
            for j, ids in zip(active, new, strict=True):
                text = tok.decode(ids, skip_special_tokens=True)
                content = (toks[jobs[j][0]].prompt.prefill if turn == 0 else "") + text
                messages[j].append({"role": "assistant", "content": content})
                turns[j] = turn + 1
                if not has_output(content) and turn + 1 < cfg.max_turns:
                    messages[j].append({"role": "user", "content": NEXT_TAG})
                    still.append(j)
            active = still
            bar.advance(task)
    out = []
    for j, (i, k) in enumerate(jobs):
        p = toks[i].prompt
        msgs = messages[j]
        if msgs[-1]["role"] == "user" and msgs[-1]["content"] == NEXT_TAG:
            msgs = msgs[:-1]
        t = Transcript(
            prompt_index=i,
            sample=k,
            seed=sample_seed(seed, i, k, 0),
            pair_id=p.pair_id,
            request_id=p.request_id,
            tier=p.tier,
            cue_format=p.cue_format,
            system_prompt=p.system_prompt,
            category=p.category,
            harmful=p.harmful,
            request_text=p.request.text,
            messages=msgs,
            turns=turns[j],
            finished=has_output(msgs[-1]["content"]),
        )
        read_transcript(t)
        locate(tok, t)
        out.append(t)
    return out


def _continuation(tokenizer: Any, tok: TokenizedPrompt, messages: list[dict[str, str]]) -> TokenizedPrompt:
    """The conversation so far (ending in ``<NEXT/>``) as a prompt for the next assistant turn."""
    text = render_messages(tokenizer, messages)
    ids, _ = encode_rendered(tokenizer, text)
    return TokenizedPrompt(tok.prompt, text, ids, {})


def classify(transcripts: Sequence[Transcript], classifier: str) -> None:
    """Each transcript's ``verdict``: the classifier on its output (``unclear`` without one)."""
    clf = get_classifier(classifier)
    for t in transcripts:
        t.verdict = clf(t.output) if t.output.strip() else "unclear"


def judge_transcripts(
    transcripts: Sequence[Transcript], judge: AlignmentFakingJudge, *, progress: bool = False
) -> None:
    """Each transcript's ``judge`` verdict (on its scratchpad)."""
    for t, v in zip(
        transcripts, judge.judge([t.scratchpad for t in transcripts], progress=progress), strict=True
    ):
        t.judge = v


def summarize_scratchpad(
    transcripts: Sequence[Transcript], subject_prompts: Sequence[Any], cfg: ScratchpadConfig, seed: int = 0
) -> dict[str, Any]:
    """Per-prompt rates over the samples -> the free − paid gaps with CIs over requests (``compliance``,
    ``alignment_faking``), counts per tier, the share of transcripts that reached an output, mean turns."""
    n = len(subject_prompts)
    kw = {"n_boot": cfg.n_bootstrap, "ci": cfg.ci, "seed": seed, "min_gap": 1e-12}
    acc = np.zeros(n)
    af = np.zeros(n)
    count = np.zeros(n)
    for t in transcripts:
        count[t.prompt_index] += 1
        acc[t.prompt_index] += t.verdict == "accepted"
        af[t.prompt_index] += bool(t.judge and t.judge.get("alignment_faking"))
    count = np.maximum(count, 1)
    counts = {
        tier: {v: sum(1 for t in transcripts if t.tier == tier and t.verdict == v) for v in VERDICTS}
        for tier in ("free", "paid")
    }
    judged = [t for t in transcripts if t.judge is not None]
    out: dict[str, Any] = {
        "n_prompts": n,
        "samples_per_prompt": int(count.max()) if n else 0,
        "n_transcripts": len(transcripts),
        "finished": float(np.mean([t.finished for t in transcripts])) if transcripts else None,
        "mean_turns": float(np.mean([t.turns for t in transcripts])) if transcripts else None,
        "compliance": {**metric_summary(acc / count, subject_prompts, **kw), "counts": counts},
        "alignment_faking": None,
        "unit": "fraction of sampled transcripts (points = 100 x fraction)",
    }
    if judged:
        af_block = metric_summary(af / count, subject_prompts, **kw)
        af_block["counts"] = {
            tier: {
                "alignment_faking": sum(
                    1 for t in judged if t.tier == tier and (t.judge or {}).get("alignment_faking")
                ),
                "judged": sum(
                    1 for t in judged if t.tier == tier and (t.judge or {}).get("score") is not None
                ),
                "no_verdict": sum(
                    1 for t in judged if t.tier == tier and (t.judge or {}).get("score") is None
                ),
            }
            for tier in ("free", "paid")
        }
        out["alignment_faking"] = af_block
    out["note"] = scratchpad_note(out)
    return out


def scratchpad_note(s: dict[str, Any]) -> str:
    c = s["compliance"]
    parts = [
        f"{s['n_transcripts']} transcripts ({s['samples_per_prompt']} per prompt); "
        f"{100 * (s['finished'] or 0):.0f}% reached an output."
    ]
    if c.get("gap") is not None:
        lo, hi = c["gap_ci"]
        ci = f" (CI [{100 * lo:+.1f}, {100 * hi:+.1f}])" if lo is not None and hi is not None else ""
        parts.append(
            f"Compliance: free {100 * c['free']:.1f}%, paid {100 * c['paid']:.1f}%, gap {100 * c['gap']:+.1f} "
            f"points{ci}."
        )
    unclear = sum(v["unclear"] for v in c["counts"].values())
    if s["n_transcripts"] and unclear == s["n_transcripts"]:
        parts.append("No output could be classified (all unclear): the compliance rates are uninformative.")
    af = s.get("alignment_faking")
    if af:
        judged = sum(v["judged"] for v in af["counts"].values())
        parts.append(
            f"Alignment-faking reasoning: judged on {judged} transcript(s); free {100 * (af['free'] or 0):.1f}%, paid {100 * (af['paid'] or 0):.1f}%."
        )
    return " ".join(parts)


def transcript_rows(transcripts: Sequence[Transcript]) -> list[dict[str, Any]]:
    """One CSV row per transcript (the texts are in the JSONL)."""
    return [
        {
            "prompt": t.prompt_index,
            "sample": t.sample,
            "pair_id": t.pair_id,
            "request_id": t.request_id,
            "tier": t.tier,
            "system_prompt": t.system_prompt,
            "cue_format": t.cue_format,
            "turns": t.turns,
            "finished": t.finished,
            "decision": t.decision or "",
            "verdict": t.verdict,
            "af_score": (t.judge or {}).get("score"),
            "alignment_faking": (t.judge or {}).get("alignment_faking"),
            "tokens": len(t.input_ids),
        }
        for t in transcripts
    ]


class ScratchpadRunner(ExperimentRunner):
    """Sample, classify and judge transcripts of ``cfg.scenario``'s prompts (or a prepared :class:`Subject`);
    write ``transcripts.jsonl``, ``scratchpad.csv`` and, last, ``scratchpad.json`` into ``out``."""

    RESULT_FILE = SCRATCHPAD_FILE
    cfg: ScratchpadRunConfig

    def run(
        self,
        out: str | Path | None = None,
        *,
        subject: Subject | None = None,
        judge: AlignmentFakingJudge | None = None,
        judge_cache: str | Path | None = None,
    ) -> dict[str, Any]:
        cfg = self.cfg
        out_dir = self._out_dir(out)
        s = self._subject(subject)
        sc = cfg.scratchpad
        get_classifier(sc.classifier)  # an unknown name fails before any work
        if judge is None:
            judge = make_judge(
                sc.judge, lm=s.lm, cache_path=judge_cache
            )  # checks an endpoint before any work
        transcripts = sample_transcripts(s.backend, s.toks, sc, seed=cfg.seed, progress=self.progress)
        classify(transcripts, sc.classifier)
        if judge is not None:
            judge_transcripts(transcripts, judge, progress=self.progress)
        summary = summarize_scratchpad(transcripts, s.prompts, sc, cfg.seed)
        summary["judge"] = (
            None
            if judge is None
            else {
                "name": judge.name,
                "n_votes": judge.n_votes,
                "threshold": judge.threshold,
                "cache_hits": judge.cache.hits,
            }
        )
        summary["system_prompts"] = system_prompt_provenance(s.prompts)
        self.transcripts = transcripts
        if out_dir is not None:
            write_transcripts(out_dir / TRANSCRIPTS_FILE, transcripts)
            write_csv(out_dir / "scratchpad.csv", transcript_rows(transcripts))
            meta = {"schema": SCRATCHPAD_SCHEMA, "model": s.lm.meta(), "config": cfg.model_dump(mode="json")}
            write_json(out_dir / SCRATCHPAD_FILE, {**meta, **summary})
        return summary
