from tests.service.redis_fixtures import redis_server, settings, sync_redis

__all__ = ["redis_server", "settings", "sync_redis"]
