"""Sources: one module per kernel interface, each filling part of the Snapshot.

lru_gen.py reads and ages through debugfs lru_gen. A /proc source (issue 9) and a
BPF source (issue 5) are meant to sit beside it.
"""
