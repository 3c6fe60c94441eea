# Stand-ins for what nixos/module.nix, nix/package.nix, flake.nix and the VM tests take from
# nixpkgs and NixOS, so that they can be evaluated with nothing but nixpkgs' lib
# (nix/eval-module.nix, nix/eval-test-scripts.nix; run by scripts/eval-nixos-module.sh).
{ lib }:

let
  inherit (lib) mkOption types;
in
rec {
  fakeStorePath = name: "${builtins.storeDir}/00000000000000000000000000000000-${name}";

  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = fakeStorePath name;
    meta.mainProgram = name;
  };

  # pkgs.formats.toml: the same value type as nixpkgs' (TOML has no null), and a
  # "generated file" that keeps the value so the checks can read what would be rendered.
  tomlFormat =
    { }:
    {
      type =
        let
          valueType =
            types.oneOf [
              types.bool
              types.int
              types.float
              types.str
              types.path
              (types.attrsOf valueType)
              (types.listOf valueType)
            ]
            // {
              description = "TOML value";
            };
        in
        valueType;
      generate = name: value: fakePackage name // { inherit value; };
    };

  pkgs = {
    formats.toml = tomlFormat;
    fuse3 = fakePackage "fuse3";
    coreutils = fakePackage "coreutils";
    musicfs = fakePackage "musicfs";
  };

  # nixos/lib/utils.nix: every argument JSON-quoted, with systemd's % and $ doubled.
  utils = rec {
    escapeSystemdExecArg =
      arg: lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON (toString arg));
    escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
  };

  loose = types.attrsOf types.anything;

  # The NixOS options the module sets, declared loosely enough to accept any definition.
  # `withFuseEnable` mirrors the two nixpkgs generations: with and without
  # programs.fuse.enable.
  nixosStubs =
    { withFuseEnable }:
    {
      options = {
        assertions = mkOption {
          type = types.listOf loose;
          default = [ ];
        };
        warnings = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
        environment.systemPackages = mkOption {
          type = types.listOf types.package;
          default = [ ];
        };
        environment.etc = mkOption {
          type = types.attrsOf loose;
          default = { };
        };
        users.users = mkOption {
          type = types.attrsOf loose;
          default = { };
        };
        users.groups = mkOption {
          type = types.attrsOf loose;
          default = { };
        };
        programs.fuse = {
          userAllowOther = mkOption {
            type = types.bool;
            default = false;
          };
        }
        // lib.optionalAttrs withFuseEnable {
          enable = mkOption {
            type = types.bool;
            default = false;
          };
        };
        systemd.services = mkOption {
          type = types.attrsOf (
            types.submodule {
              freeformType = loose;
              options.serviceConfig = mkOption {
                type = loose;
                default = { };
              };
            }
          );
          default = { };
        };
      };
    };

  # Further NixOS options the VM test machines set, for evaluating those machines.
  testNodeStubs = {
    options = {
      virtualisation = mkOption {
        type = loose;
        default = { };
      };
      networking = mkOption {
        type = loose;
        default = { };
      };
      services.openssh = mkOption {
        type = loose;
        default = { };
      };
      services.minio = mkOption {
        type = loose;
        default = { };
      };
    };
  };
}
