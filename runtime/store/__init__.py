"""Layer 2: where runs, their state history, pause inputs, cache records, concurrency
slots and results are kept (``memory://``, ``sqlite:///``,
``postgresql://``). Imports only ``runtime.core``.
"""
