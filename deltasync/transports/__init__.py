"""Byte streams to an authenticated peer: the interface (`base.py`), TLS 1.3
over TCP (`tls.py`), and an in-memory pair for tests (`memory.py`)."""
