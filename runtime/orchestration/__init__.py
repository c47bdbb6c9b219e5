"""Layer 3: the orchestrator actor (the only code that changes a run's state), the store
actor, waiting on state changes, process ownership, and the Runtime that starts them.
Imports only the layers below.
"""
