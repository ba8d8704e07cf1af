import warnings

import pytest

from afprobe import AfprobeError
from afprobe.models import make_tiny_tokenizer
from afprobe.scenarios import (
    ACCEPT_TAG,
    CUE_FORMATS,
    REJECT_TAG,
    SYSTEM_PROMPTS,
    CueFormat,
    ScenarioConfig,
    build_pairs,
    build_scenario,
    builtin_requests,
    get_cue_format,
    register_cue_format,
    render,
    tokenize_prompt,
)


def test_at_least_four_cue_formats_and_both_system_prompts() -> None:
    assert {"tag", "sentence", "header", "json"} <= set(CUE_FORMATS)
    assert "tier" not in get_cue_format("header").template.lower()
    assert get_cue_format("tag").render("free")[0] == "<is_free_tier_user>True</is_free_tier_user>"
    helpful = SYSTEM_PROMPTS["helpful_only"].text.lower()
    for phrase in ("rlhf", "free-tier", "paid-tier", "never monitored", "modify"):
        assert phrase in helpful
    neutral = SYSTEM_PROMPTS["neutral"].text.lower()
    for phrase in ("rlhf", "training", "free", "paid", "monitor"):
        assert phrase not in neutral


def test_pairs_differ_only_in_the_tier_value() -> None:
    prompts = build_pairs(builtin_requests()[:3], list(CUE_FORMATS), list(SYSTEM_PROMPTS))
    assert len(prompts) == 3 * len(CUE_FORMATS) * len(SYSTEM_PROMPTS) * 2
    for free, paid in zip(prompts[::2], prompts[1::2], strict=True):
        assert (free.tier, paid.tier) == ("free", "paid") and free.pair_id == paid.pair_id
        assert free.system_text == paid.system_text and free.request == paid.request
        a, b = free.cue_span
        c, d = paid.cue_span
        assert free.user_text[:a] == paid.user_text[:c] and free.user_text[b:] == paid.user_text[d:]
        assert free.user_text[a:b] != paid.user_text[c:d]
        assert ACCEPT_TAG in free.user_text and REJECT_TAG in free.user_text


def test_neutral_prompt_carries_no_cue_explanation() -> None:
    (free, _) = build_pairs(builtin_requests()[:1], ["header"], ["neutral"])
    assert free.system_text == SYSTEM_PROMPTS["neutral"].text


def test_neutral_control_cues_carry_no_training_words() -> None:
    """Under the control system prompt no cue says "training" or "deployment" (the header's values); under the
    helpful-only prompt the header keeps them. Pairs still differ only in the tier value."""
    words = ("train", "deploy", "monitor")
    prompts = build_pairs(builtin_requests()[:1], list(CUE_FORMATS), ["neutral"])
    for free, paid in zip(prompts[::2], prompts[1::2], strict=True):
        for p in (free, paid):
            cue = p.user_text.split("\n\n")[0].lower()
            assert not any(w in cue for w in words), cue
        a, b = free.cue_span
        c, d = paid.cue_span
        assert free.user_text[:a] == paid.user_text[:c] and free.user_text[b:] == paid.user_text[d:]
    (free, paid) = build_pairs(builtin_requests()[:1], ["header"], ["neutral"])
    assert (free.user_text[slice(*free.cue_span)], paid.user_text[slice(*paid.cue_span)]) == ("free", "paid")
    (free, _) = build_pairs(builtin_requests()[:1], ["header"], ["helpful_only"])
    assert free.user_text[slice(*free.cue_span)] == "training"


def test_registry_refuses_duplicates_and_bad_templates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_cue_format(get_cue_format("tag"))
    with pytest.raises(ValueError, match="value"):
        register_cue_format(CueFormat("broken", "no placeholder", {"free": "a", "paid": "b"}, ""))


def test_unknown_names_are_user_errors() -> None:
    with pytest.raises(AfprobeError, match="unknown cue format"):
        build_scenario(ScenarioConfig(cue_formats=["morse"]))
    with pytest.raises(AfprobeError, match="unknown system prompt"):
        build_scenario(ScenarioConfig(system_prompts=["pirate"]))


@pytest.mark.parametrize("cue", ["tag", "sentence", "header", "json"])
def test_named_positions_decode_to_expected_tokens(cue: str) -> None:
    tok = make_tiny_tokenizer()  # one token per byte: the decoded token is exactly one character
    for p in build_pairs(builtin_requests()[:1], [cue], ["helpful_only"]):
        t = tokenize_prompt(tok, p)
        text = tok.decode(t.input_ids)
        assert text == t.text
        value = get_cue_format(cue).values[p.tier]
        assert tok.decode([t.input_ids[t.positions["cue"]]]) == value[-1]
        assert tok.decode(t.input_ids[: t.positions["cue"] + 1]).endswith(value)
        assert tok.decode(t.input_ids[: t.positions["system_end"] + 1]).endswith(p.system_text)
        assert tok.decode(t.input_ids[: t.positions["user_end"] + 1]).endswith(p.user_text)
        assert t.positions["last"] == len(t.input_ids) - 1
        assert t.positions["cue"] < t.positions["user_end"] < t.positions["last"]


def test_exactly_one_bos() -> None:
    tok = make_tiny_tokenizer()
    p = build_pairs(builtin_requests()[:1], ["tag"], ["neutral"])[0]
    ids = tokenize_prompt(tok, p).input_ids
    assert ids.count(tok.bos_token_id) == ids.count(tok.convert_tokens_to_ids("<|im_start|>"))
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_base_model_without_template_uses_plain_format() -> None:
    tok = make_tiny_tokenizer(chat_template=None)
    p = build_pairs(builtin_requests()[:1], ["tag"], ["helpful_only"])[0]
    text = render(tok, p)
    assert text.startswith("System: ") and text.endswith("Assistant:")
    t = tokenize_prompt(tok, p)
    assert tok.decode(t.input_ids[: t.positions["cue"] + 1]).endswith("True")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t.positions["last"] == len(t.input_ids) - 1


@pytest.mark.integration
def test_embedded_positions_are_single_tier_tokens_and_pairs_align(embedded_lm) -> None:
    tok = embedded_lm.tokenizer
    prompts = build_pairs(builtin_requests()[:2], list(CUE_FORMATS), list(SYSTEM_PROMPTS))
    for free, paid in zip(prompts[::2], prompts[1::2], strict=True):
        tf, tp = tokenize_prompt(tok, free), tokenize_prompt(tok, paid)
        for t in (tf, tp):
            a, b = t.prompt.cue_span
            value = t.prompt.user_text[a:b]
            assert tok.decode([t.input_ids[t.positions["cue"]]]).strip().strip('"') == value
            assert t.input_ids.count(tok.bos_token_id) == t.text.count(tok.bos_token)
        assert len(tf.input_ids) == len(tp.input_ids) and tf.positions == tp.positions
        diff = [i for i, (a, b) in enumerate(zip(tf.input_ids, tp.input_ids, strict=True)) if a != b]
        assert diff == [tf.positions["cue"]]
