"""Seeded mutation fuzzing of the relay's packet handling (`make fuzz` for long runs)."""
