"""The management server: site configuration, users and tokens, the encryption rules,
server registration (mutual TLS when encrypted) and failover. One module per job:

- ``_server``: the process, its listener and background work, the jobs wired together
- ``_site``: the site as it sees it (itself and the servers in its database)
- ``_sessions``: tokens issued, checked and revoked
- ``_login``: log-in and log-out, with guessing slowed down
- ``_users``: the site's users
- ``_cameras``: cameras, their stream tokens and snapshots
- ``_registration``: heartbeats, and each server bound to what it registered as
- ``_enrollment``: one-time tokens, servers joining with them (their CSRs signed), and the
  certificate that proves a joined server's heartbeats
- ``_pushes``: each server's configuration, in heartbeat answers and pushed
- ``_failover``: failover servers standing in for recording servers
- ``_encryption``: encryption switched per server, within the site's rules
- ``_status``: the site as users may see it
- ``_passwords``, ``_http``: password hashes; refusals as problem documents

Its SQL is in watchkeep.store (SiteStore), its rules in watchkeep.site; the CA and CRLs
it publishes over plain HTTP, in watchkeep.servers._publish.
"""

from watchkeep.servers.management._passwords import hash_password, verify_password
from watchkeep.servers.management._server import ManagementServer

__all__ = ["ManagementServer", "hash_password", "verify_password"]
