"""Layer 4: flow run and task run engines, their contexts, bodies, hooks, futures, result
settings, cache policies and transactions. Imports only the layers below.
"""
