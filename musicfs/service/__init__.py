"""The daemon's lifecycle: FUSE session, supervisor, sd_notify and watchdog, control
socket, status, reload, stale mounts, crash logs, logging set-up.

Nothing outside the daemon's composition root (``musicfs.daemon``) and the CLI needs
these modules; the components (origins, catalog, cache) never import them.
"""
