"""A quick, bounded reachability probe, so code that downloads fails in under a second when offline.

A foundation module: it imports nothing from pneumodet, so the model factory and the Kaggle client both
use it without either importing the other.
"""

from __future__ import annotations

import socket
import threading


def can_reach(host: str, port: int = 443, timeout_s: float = 0.8) -> bool:
    """Return whether a TCP connection to host:port opens within ``timeout_s`` (DNS included)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout_s)
    return bool(result and result[0])
