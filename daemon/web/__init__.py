"""The status page on `metrics.listen` (docs/OPERATIONS.md "Status page"; docs/DESIGN.md
"Status page"): Starlette behind uvicorn in the daemon's own event loop, jinja2 templates,
charts drawn server-side as SVG, no script and nothing from outside.

- `view`: what the pages show, from the last cycle's result (pure: budget bars in risk order,
  anomaly bands).
- `charts`: the SVG charts (pure).
- `auth`: read and admin tokens, the login cookie and CSRF marks.
- `app`: the routes; `server`: uvicorn in the daemon's loop.
"""
