"""The served chat (scripts.rag_web): a FastAPI app (app.py), its request checks and response shapes (api.py),
dynamic batching over the batched Engine (batcher.py) and the offline chat page (static/index.html)."""
