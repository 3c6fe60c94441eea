"""Everything between a FUSE read and an origin: the chunk store, its index, the reader."""
