"""Retrieval-augmented conversations: training data (RAFT, multi-hop), answer metrics, rewards, evaluation, plots."""
