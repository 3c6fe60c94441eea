"""The library: the origins brought into the catalog and served as a tree.

``sync`` brings one origin's listing into the catalog (tags of new and changed files,
checkpointed batches), ``coordinator`` turns syncs into published tree snapshots,
``sync_loop`` is the daemon's background sync, ``settings`` the ``[library]`` section.
Nothing is imported here, so reading a config does not import the catalog or the sync."""
