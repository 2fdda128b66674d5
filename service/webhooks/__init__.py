"""Webhooks: ``video.completed`` and ``video.failed`` announced to an HTTP receiver, signed as
Standard Webhooks, delivered at least once from a durable outbox in Redis.

- ``urls``: which ``webhook_url`` a request may name (checked by the API at submit);
- ``signing``: the Standard Webhooks headers and signature;
- ``outbox``: the events in Redis (written by the queue's scripts as a job ends) and the steps
  of their delivery (claim, done, retry, give up);
- ``deliverer``: the loop that delivers them (``qvgen serve webhooks``).
"""
