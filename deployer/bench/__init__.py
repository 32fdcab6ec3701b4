"""`bench` and `tune`: the load generator, the numbers it measures and what they suggest.

One module per idea: `samples` (what a request and a point measured, vLLM's metric
definitions), `sweep` (which points to run), `arrivals` (open-loop send times), `datasets`
(ShareGPT prompts), `client` (one streamed request, /metrics), `loadgen` (workers),
`runner` (`bench run` as a library call), `slo` (goodput), `interference` and `compare`
(reading runs), `suggest` and `tune` (`tune`'s advice and the library call), `storage` (run
folders), `report` (tables, CSV, Markdown), `vllm_format` (`vllm bench serve`'s JSON),
`charts` (PNG, the only importer of matplotlib) and `textfmt` (numbers as text).
"""
