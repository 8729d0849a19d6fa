"""Token counting, pricing and the spend ledger."""
