"""``modelforge serve``: the ModelForge HTTP routes outside Jupyter, on uvicorn, in N processes on one port.

A door of its own, beside the Jupyter server extension: the same routes and answers (the core's wire format and
error family), its own token, the notebooks' registry and cache (the same ``Settings``). ``server.py`` starts it,
``app.py`` is the ASGI application each worker runs, ``routes.py`` its endpoints, ``http.py`` raw-ASGI HTTP.
"""
