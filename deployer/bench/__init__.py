"""`bench` and `tune`: the load generator, the numbers it measures and what they suggest.

One module per idea: `samples` (what a request and a point measured), `sweep` (which points
to run), `client` (one streamed request, /metrics), `loadgen` (workers and arrivals),
`runner` (`bench run` as a library call), `interference` and `compare` (reading runs),
`tune` (suggestions and `tune` as a library call), `storage` (run folders), `report` (tables,
CSV, Markdown) and `charts` (PNG, the only importer of matplotlib).
"""
