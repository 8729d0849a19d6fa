"""State backends: embedded (memory + disk journal) and Redis."""
