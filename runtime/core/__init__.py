"""Layer 1, the bottom: states, run records, orchestration rules, exceptions, options.

Pure and synchronous: no I/O beyond reading the environment, no event loop, no anyio.
Imports nothing else of ``runtime``.
"""
