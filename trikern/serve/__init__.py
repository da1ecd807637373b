"""`trikern serve`: an OpenAI-compatible HTTP server over one Model (the optional `serve` extra).

protocol.py maps OpenAI requests and responses, engine.py runs generations one at a time on one decoder
thread with a bounded queue, batch_engine.py several at once (--max-batch) on that thread, app.py holds the Starlette routes, metrics.py the Prometheus text, launch.py starts
uvicorn over a loaded Model; the command line is trikern/cli/serve.py. Importing this package needs
nothing beyond trikern; the command says how to install the extra when Starlette or uvicorn is missing.
"""
