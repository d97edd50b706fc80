"""Prometheus metrics of the server, written in the text exposition format (version 0.0.4).

Counters and histograms are updated on the event loop only (the ASGI middleware and the
batcher's ``on_batch`` callback), so they need no lock.  Endpoints are labelled by their
route template (``/items/{item_id}/sid``, not the raw path) so the number of series stays
bounded; paths that match no route count as ``other``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)      # last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out, acc = [], 0
        for b, c in zip(self.buckets, self.counts):
            acc += c
            out.append(f'{name}_bucket{{{labels}{sep}le="{b:g}"}} {acc}')
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        lab = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{lab} {self.sum:.9g}", f"{name}_count{lab} {self.count}"]
        return out


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServerMetrics:
    """Request counts by endpoint, method and status; latency per endpoint; batch sizes."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.rejected = 0

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, method, int(status))] += 1
        if endpoint not in self.latency:
            self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
        self.latency[endpoint].observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def render(self, queue_depth: int) -> str:
        lines = ["# HELP sidkit_requests_total HTTP requests answered, by endpoint, method and status code.",
                 "# TYPE sidkit_requests_total counter"]
        for (ep, method, status), n in sorted(self.requests.items()):
            lines.append(f'sidkit_requests_total{{endpoint="{_esc(ep)}",method="{method}",status="{status}"}} {n}')
        lines += ["# HELP sidkit_request_duration_seconds Time from request start to the end of the response.",
                  "# TYPE sidkit_request_duration_seconds histogram"]
        for ep, h in sorted(self.latency.items()):
            lines += h.lines("sidkit_request_duration_seconds", f'endpoint="{_esc(ep)}"')
        lines += ["# HELP sidkit_batch_size Recommendation requests per batched beam search.",
                  "# TYPE sidkit_batch_size histogram", *self.batch_size.lines("sidkit_batch_size", ""),
                  "# HELP sidkit_batch_duration_seconds Time of one batched beam search.",
                  "# TYPE sidkit_batch_duration_seconds histogram",
                  *self.batch_seconds.lines("sidkit_batch_duration_seconds", ""),
                  "# HELP sidkit_queue_rejected_total Requests answered 503 because the queue was full.",
                  "# TYPE sidkit_queue_rejected_total counter", f"sidkit_queue_rejected_total {self.rejected}",
                  "# HELP sidkit_queue_depth Recommendation requests waiting for a batch.",
                  "# TYPE sidkit_queue_depth gauge", f"sidkit_queue_depth {queue_depth}"]
        return "\n".join(lines) + "\n"
