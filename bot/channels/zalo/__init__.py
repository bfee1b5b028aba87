"""The Zalo Bot channel: `channel` (updates in), `sender` (outbox payloads out), `api` (the
thin HTTP client both use)."""
