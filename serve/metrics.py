"""Prometheus metrics of one server (own CollectorRegistry, so several apps in one test process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("protege_requests_total", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("protege_errors_total", "Error responses by OpenAI error code", ["code"], registry=r)
        self.ttft = Histogram("protege_time_to_first_token_seconds", "Time from request to first token", ["model"],
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30), registry=r)
        self.tokens_per_second = Histogram("protege_generation_tokens_per_second", "Decode speed of one request",
                                           ["model"], buckets=(1, 5, 10, 20, 50, 100, 200, 500, 1000), registry=r)
        self.generated = Counter("protege_generated_tokens_total", "Completion tokens", ["model"], registry=r)
        self.prompt_tokens = Counter("protege_prompt_tokens_total", "Prompt tokens", ["model"], registry=r)
        self.inflight = Gauge("protege_requests_in_flight", "Generation requests admitted", registry=r)
        self.queue_depth = Gauge("protege_queue_depth", "Admitted requests waiting for a decoding slot", registry=r)
        self.rejected = Counter("protege_queue_rejected_total", "Requests refused with 429 (queue full)", registry=r)
        self.rag_refusals = Counter("protege_rag_refusals_total", "Answers refused by the RAG confidence gate",
                                    ["model"], registry=r)
        self.loaded = Gauge("protege_model_loaded", "1 when the model is loaded", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_generation(self, model: str, ttft_s: float | None, completion_tokens: int, prompt_tokens: int,
                           decode_s: float) -> None:
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        self.generated.labels(model).inc(completion_tokens)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        if completion_tokens > 1 and decode_s > 0:
            self.tokens_per_second.labels(model).observe(completion_tokens / decode_s)
