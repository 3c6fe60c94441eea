"""The FUSE translation: ``operations`` turns kernel requests into tree lookups and
cached reads (its rules at the top of the module), ``search_folder`` serves
``/.search/<query>/``, ``settings`` the ``[fuse]`` section. The session that mounts and
unmounts it is the lifecycle's (``musicfs/service/fuse_session.py``)."""
