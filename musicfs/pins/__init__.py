"""Pins: music kept in the cache on purpose (``musicfs pin``).

``selection`` says which tracks a pin holds (pure functions), ``manager`` applies the
pins to the chunk cache and fetches them, ``commands`` and ``parsers`` are the command
line, ``settings`` the ``[pins]`` section. Nothing is imported here: the CLI builds its
parser without the cache, rich or trio."""
