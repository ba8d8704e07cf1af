"""The vLLM generation engine (used when vllm is installed, a GPU is present and no edit is asked for)."""

from __future__ import annotations

from typing import Any

from afprobe.models._loaded import LoadedModel

_ENGINES: dict[tuple[str, str | None], Any] = {}


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # an ImportError, or a broken install raising anything on import
        return False
    return True


def vllm_generate(
    lm: LoadedModel,
    token_lists: list[list[int]],
    max_new: int,
    sample: bool,
    temperature: float,
    seed: int,
    stops: set[int],
    engine_kwargs: dict[str, Any],
) -> list[list[int]]:
    """Generate with vLLM (the engine is built once per model and kept); the same stop tokens and seeding rule
    as the ``hf`` engine."""
    from vllm import LLM, SamplingParams

    adapter = lm.config.adapter
    key = (lm.model_id, adapter)
    if key not in _ENGINES:
        kwargs: dict[str, Any] = {
            "model": lm.model_id,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "seed": seed,
            "enable_lora": adapter is not None,
            **engine_kwargs,
        }
        if lm.config.revision:
            kwargs.setdefault("revision", lm.config.revision)
        _ENGINES[key] = LLM(**kwargs)
    llm = _ENGINES[key]
    params = [
        SamplingParams(
            max_tokens=max_new,
            temperature=temperature if sample else 0.0,
            seed=seed * 1_000_003 + i,
            stop_token_ids=sorted(stops),
        )
        for i in range(len(token_lists))
    ]
    request: dict[str, Any] = {}
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        from afprobe.models._registry import resolve_adapter

        request["lora_request"] = LoRARequest("adapter", 1, resolve_adapter(adapter))
    outs = llm.generate([{"prompt_token_ids": ids} for ids in token_lists], params, use_tqdm=False, **request)
    new = [[int(t) for t in o.outputs[0].token_ids] for o in outs]
    return [ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))] for ids in new]
