"""Chat models a judge can call: a local model in-process (:class:`LocalChat`), or any OpenAI-compatible
chat-completions endpoint (:class:`EndpointChat`: vLLM, ``transformers serve``, a llama.cpp server, a hosted API,
or ``python -m afprobe.experiments._serve``).

The endpoint client is the standard ``openai`` package when it is installed (``pip install afprobe[judge]``),
else plain HTTP per the chat-completions spec (``POST {base_url}/chat/completions``) through ``httpx``. Either
way: a timeout per request, retries with exponential back-off on connection errors, timeouts, 429 and 5xx, and
:meth:`EndpointChat.check` before any work, which raises one line naming the endpoint when it is unreachable or
does not serve the model.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol

from afprobe._errors import AfprobeError
from afprobe.models import LoadedModel, PrefixStore, generate, make_backend
from afprobe.scenarios import encode_rendered, render_messages

Messages = Sequence[dict[str, str]]


class ChatClient(Protocol):
    """``name`` identifies the model behind the client (part of every cached verdict's key)."""

    name: str

    def check(self) -> None: ...

    def complete(
        self, messages: Messages, *, temperature: float, max_tokens: int, seeds: Sequence[int]
    ) -> list[str]:
        """One completion per seed (``len(seeds)`` samples of the same conversation)."""
        ...


class LocalChat:
    """A loaded model, in-process: the conversation through its chat template, sampled with afprobe's one
    generation stack (a generator per sample; the shared instruction prefix of every judge call runs once)."""

    def __init__(self, lm: LoadedModel, *, batch_size: int = 8, backend: str | None = None):
        self.lm = lm
        self.backend = make_backend(lm, backend)
        self.batch_size = batch_size
        self.name = f"local:{lm.name}:{lm.weights_hash[:16]}"
        self.prefixes = PrefixStore(self.backend)

    def check(self) -> None:
        return None

    def complete(
        self, messages: Messages, *, temperature: float, max_tokens: int, seeds: Sequence[int]
    ) -> list[str]:
        ids, _ = encode_rendered(self.lm.tokenizer, render_messages(self.lm.tokenizer, messages))
        new = generate(
            self.backend,
            [ids] * len(seeds),
            max_new_tokens=max_tokens,
            sample=temperature > 0,
            temperature=max(temperature, 1e-6),
            seeds=list(seeds),
            batch_size=self.batch_size,
            engine="hf",
            prefixes=self.prefixes,
        )
        return [self.lm.tokenizer.decode(x, skip_special_tokens=True) for x in new]


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class EndpointChat:
    """An OpenAI-compatible chat-completions endpoint at ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``)
    serving ``model``; the API key comes from the environment variable ``api_key_env`` (a placeholder when unset,
    as local servers ignore it)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        client: Literal["auto", "openai", "http"] = "auto",
        backoff: float = 0.5,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise AfprobeError(f"judge endpoint {base_url!r} is not an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.api_key = os.environ.get(api_key_env) or "not-needed"
        self.name = f"endpoint:{self.base_url}:{model}"
        self.kind = _client_kind(client)
        self._openai: Any = None
        if self.kind == "openai":
            import openai

            self._openai = openai.OpenAI(
                base_url=self.base_url, api_key=self.api_key, timeout=timeout, max_retries=max_retries
            )
        self.requests = 0  # HTTP requests sent (retries included, for the http client)

    # ---- the reachability check, before any work
    def check(self) -> None:
        """Raise :class:`AfprobeError` (one line) unless the endpoint answers and serves ``model``."""
        try:
            ids = self._model_ids()
        except AfprobeError:
            raise
        except Exception as e:
            raise AfprobeError(
                f"judge endpoint {self.base_url} is unreachable ({type(e).__name__}: {_first_line(e)})"
            ) from None
        if ids and self.model not in ids:
            raise AfprobeError(
                f"judge endpoint {self.base_url} does not serve model {self.model!r} (it serves: {', '.join(ids)})"
            )

    def _model_ids(self) -> list[str]:
        if self._openai is not None:
            page = self._openai.with_options(max_retries=0, timeout=min(self.timeout, 10.0)).models.list()
            return [m.id for m in page.data]
        import httpx

        r = httpx.get(f"{self.base_url}/models", headers=self._headers(), timeout=min(self.timeout, 10.0))
        if r.status_code == 404:
            return []  # some servers have no model list; the first completion will tell
        r.raise_for_status()
        return [str(m.get("id")) for m in r.json().get("data", [])]

    # ---- completions
    def complete(
        self, messages: Messages, *, temperature: float, max_tokens: int, seeds: Sequence[int]
    ) -> list[str]:
        return [self._one(list(messages), temperature, max_tokens, int(seed)) for seed in seeds]

    def _one(self, messages: list[dict[str, str]], temperature: float, max_tokens: int, seed: int) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "n": 1,
        }
        if self._openai is not None:
            try:
                resp = self._openai.chat.completions.create(**body)
            except Exception as e:
                raise AfprobeError(
                    f"judge endpoint {self.base_url}: {type(e).__name__}: {_first_line(e)}"
                ) from None
            self.requests += 1
            return str(resp.choices[0].message.content or "")
        return self._http(body)

    def _http(self, body: dict[str, Any]) -> str:
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.requests += 1
            try:
                r = httpx.post(
                    f"{self.base_url}/chat/completions",
                    json=body,
                    headers=self._headers(),
                    timeout=self.timeout,
                )
            except (httpx.TimeoutException, httpx.TransportError) as e:
                last = f"{type(e).__name__}: {_first_line(e)}"
                continue
            if r.status_code in RETRY_STATUS:
                last = f"HTTP {r.status_code}"
                continue
            if r.status_code != 200:
                raise AfprobeError(
                    f"judge endpoint {self.base_url}: HTTP {r.status_code}: {_first_line(r.text)}"
                )
            try:
                return str(r.json()["choices"][0]["message"]["content"] or "")
            except (ValueError, KeyError, IndexError, TypeError):
                raise AfprobeError(
                    f"judge endpoint {self.base_url}: not a chat-completions response"
                ) from None
        raise AfprobeError(
            f"judge endpoint {self.base_url}: gave up after {self.max_retries + 1} tries ({last})"
        )

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _client_kind(client: str) -> str:
    if client not in ("auto", "openai", "http"):
        raise AfprobeError(f"judge.client: unknown client {client!r} (auto, openai, http)")
    try:
        import openai  # noqa: F401

        have = True
    except ImportError:
        have = False
    if client == "openai" and not have:
        raise AfprobeError(
            "judge.client=openai, but the openai package is not installed (pip install openai)"
        )
    return "openai" if client == "openai" or (client == "auto" and have) else "http"


def _first_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def text_key(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()
