# The NixOS VM tests, by check name (flake.nix turns each into checks.<system>.<name>).
{ }
