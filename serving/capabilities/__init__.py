"""The built-in capabilities, one module each: its deployment, its builder arguments and flags,
its routes, and the `register(...)` call that makes it part of the server (serving/registry.py)."""
