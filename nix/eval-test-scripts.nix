# The NixOS VM tests evaluated with nixpkgs' lib and stand-ins (nix/stubs.nix; no nixpkgs
# needed): every test machine through the real module, and the Python test scripts, so that
# scripts/eval-nixos-module.sh can check the machines' MusicFS settings and lint and
# type-check the scripts the way the NixOS test driver does before it boots any VM.
#
#   nix-instantiate --eval --strict --json nix/eval-test-scripts.nix --arg lib 'import /path/to/lib'
{ lib }:

let
  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs) fakePackage;

  pkgs = stubs.pkgs // {
    stdenv.hostPlatform.system = "x86_64-linux";
    runCommand = name: _: _: fakePackage name;
    writeText = name: _: fakePackage name;
    python3.withPackages = _: fakePackage "python3-env";
    minio = fakePackage "minio" // {
      overrideAttrs = _: fakePackage "minio";
    };
    minio-client = fakePackage "minio-client";
    openssh = fakePackage "openssh";
  };

  # The flake as the tests see it: its package and module wrapper.
  self = {
    packages.x86_64-linux.musicfs = pkgs.musicfs;
    nixosModules.default = {
      imports = [ ../nixos/module.nix ];
      services.musicfs.package = pkgs.musicfs;
    };
  };

  # One test machine through the real module and the stand-in NixOS options: its
  # assertions and, where MusicFS runs, the settings it would get.
  evalNode =
    node:
    let
      config =
        (lib.evalModules {
          specialArgs = { inherit pkgs; inherit (stubs) utils; };
          modules = [
            node
            (stubs.nixosStubs { withFuseEnable = true; })
            stubs.testNodeStubs
          ];
        }).config;
    in
    {
      failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
      musicfs =
        if config.services.musicfs.enable or false then
          config.services.musicfs.configFile.value
        else
          null;
    };

  evalTest =
    file:
    let
      test = import file { inherit self; } { inherit pkgs lib; };
    in
    {
      inherit (test) testScript;
      nodes = lib.mapAttrs (_: evalNode) test.nodes;
    };
in
lib.mapAttrs (_: evalTest) (import ../nixos/tests/all.nix)
