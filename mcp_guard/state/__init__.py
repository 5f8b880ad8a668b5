"""State that must survive restarts and is not the audit trail: the clock's high-water mark and rule use.

Only `usage.py` imports aiosqlite.
"""
