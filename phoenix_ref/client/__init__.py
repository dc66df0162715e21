"""Reference client used by tests, the demo and the CLI (GUIDE §1)."""
