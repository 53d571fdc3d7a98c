"""Sharding plans: planner topology, per-table constraints, plans, and DMP wrapping.

Plans embedding tables onto ranks with TorchRec's EmbeddingShardingPlanner; trains nothing.
"""
