"""The catalog: what tracks exist, their tags, and the tree of names built from them."""
