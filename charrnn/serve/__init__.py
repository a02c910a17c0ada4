"""`charrnn serve`: trained models over an OpenAI-compatible HTTP API, every in-flight request one stream of a
continuously batched step.

    HTTP (asyncio, app.py) ──Job──▶ Scheduler thread (scheduler.py) ── owns the model, steps the Batch (batch.py)
         ◀── characters, per Stream (stream.py), one wake-up a step ──┘

protocol.py checks requests and shapes responses and errors; metrics.py counts; server.py loads the models and
runs uvicorn. Only batch.py and scheduler.py run torch, on the scheduler's thread. The HTTP pieces need the
optional extra `pip install 'charrnn[serve]'` (Starlette and uvicorn).
"""
