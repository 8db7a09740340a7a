"""One module per pipeline stage; each exposes ``register(app)``."""
