"""The job queue between the API and the workers: Redis Streams consumer groups, one per model.

``keys`` names every Redis key, ``records`` the job hash, ``scripts`` the Lua that makes every
state change atomic and fenced, ``producer`` the API side (submit, read, list, delete) and
``consumer`` the worker side (claim, heartbeat, progress, finish, hand back), ``events`` the
API's wait on a job's event stream (``GET /v1/videos/{id}/events``).
"""
