"""Layer 5, the top: ``Flow``, ``Task``, the entry points that turn a call into an engine
run, flow-run control (pause, resume, cancel), concurrency limits and the CLI.
"""
