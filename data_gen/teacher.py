"""The OpenAI-compatible teacher: any ``/v1/chat/completions`` endpoint (our own server counts) rewrites the
template draft of each answer in its own words.

The teacher sees the question, the facts the answer may use, and the draft; it must not add facts. Its
rewrite goes through the same fact check as the templates, and a rewrite that fails it (or a call that
fails after bounded retries) falls back to the template draft, so the record is never lost and never
states more than the record holds. Calls run concurrently (a thread pool) with bounded retries and
exponential back-off on connection errors, timeouts, 429 and 5xx.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

SYSTEM = ("You rewrite answers about a face image. Keep every fact in the draft exactly (numbers, yes/no, "
          "which face), add no new facts, keep estimates phrased as estimates (perceived, appears, model "
          "estimate), never name anyone the draft does not name, and reply with the rewritten answer only.")


class TeacherError(RuntimeError):
    """The endpoint could not be used (after retries); the message says why."""


@dataclass
class TeacherStats:
    calls: int = 0
    retries: int = 0
    failures: int = 0


class OpenAITeacher:
    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 3, concurrency: int = 4, temperature: float = 0.7, max_tokens: int = 256,
                 backoff_s: float = 0.5) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--teacher-url must be an http(s) URL, got {url!r}")
        base = url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else (
            base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions"))
        self.model = model
        self.name = f"teacher:{model}"
        self.api_key = api_key if api_key is not None else os.environ.get("FACELLM_TEACHER_API_KEY",
                                                                          os.environ.get("OPENAI_API_KEY"))
        self.timeout_s, self.max_retries, self.concurrency = timeout_s, max_retries, max(1, concurrency)
        self.temperature, self.max_tokens, self.backoff_s = temperature, max_tokens, backoff_s
        self.stats = TeacherStats()

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.stats.retries += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(self.endpoint, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
                if e.code != 429 and e.code < 500:
                    break  # a client error will not fix itself
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        raise TeacherError(f"teacher at {self.endpoint} failed after {self.max_retries + 1} attempt(s): {last}")

    def rewrite(self, question: str, draft: str, facts: str) -> str:
        self.stats.calls += 1
        payload = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                   "messages": [{"role": "system", "content": SYSTEM},
                                {"role": "user", "content": f"Question: {question}\nFacts: {facts}\nDraft answer: "
                                                            f"{draft}\nRewrite the draft answer."}]}
        out = self._post(payload)
        try:
            text = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(f"teacher reply has no choices[0].message.content: {str(out)[:200]}") from None
        if not isinstance(text, str) or not text.strip():
            raise TeacherError("teacher returned an empty answer")
        return text.strip()

    def rewrite_many(self, jobs: Sequence[tuple[str, str, str]]) -> list[str | None]:
        """Rewrites for (question, draft, facts) jobs, concurrently; None where the teacher failed."""
        def one(job):
            try:
                return self.rewrite(*job)
            except TeacherError:
                self.stats.failures += 1
                return None

        if not jobs:
            return []
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(jobs))) as pool:
            return list(pool.map(one, jobs))
