"""The gateway: one URL and one key in front of every tier of a deployment.

`config` (pure: profile section, plan -> GatewayConfig), `routing` and `admission` (pure
decisions), `upstream` and `streaming` (HTTP to the tiers), `app` (the ASGI app). Importing this
package does not import FastAPI: only `app` and `server` do.
"""
