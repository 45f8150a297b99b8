"""Redis: a client for the configured (``REDIS_URL``) or embedded server."""

from __future__ import annotations


def client(timeout: float = 30):
    """A ``redis.Redis`` client; close it when done."""
    import redis

    from opsbook import services

    return redis.Redis.from_url(services.redis_url(), socket_timeout=timeout)
