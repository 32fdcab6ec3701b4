"""When each request of an open-loop point is sent, as `vllm bench serve --request-rate R
--burstiness B` sends them: gaps drawn from a gamma distribution with shape B and mean 1/R
(B = 1 is a Poisson process; B < 1 is burstier, B > 1 steadier, infinite B evenly spaced),
then scaled so that N requests span exactly N/R seconds (vLLM does the same to keep runs with
different seeds comparable)."""

from __future__ import annotations

import math
import random


def arrival_times(
    requests: int, rate: float, burstiness: float = 1.0, seed: int = 0
) -> tuple[float, ...]:
    """Seconds after the point's start at which request i is sent (the first at its gap)."""
    if requests <= 0:
        return ()
    if not rate > 0 or not burstiness > 0:
        raise ValueError("rate and burstiness must be above 0")
    if math.isinf(rate):
        return (0.0,) * requests
    rng = random.Random(seed)
    if math.isinf(burstiness):
        gaps = [1.0 / rate] * requests
    else:
        theta = 1.0 / (rate * burstiness)
        gaps = [rng.gammavariate(burstiness, theta) for _ in range(requests)]
    times: list[float] = []
    total = 0.0
    for gap in gaps:
        total += gap
        times.append(total)
    scale = (requests / rate) / total if total > 0 else 1.0
    return tuple(t * scale for t in times)
