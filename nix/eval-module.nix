# Evaluates nixos/module.nix with nothing but nixpkgs' `lib`: the NixOS options the module
# writes to (systemd.services, users, programs.fuse, assertions, ...) are declared here as
# loose stand-ins and pkgs holds fake derivations, so the module's own logic -- option
# types, defaults, merging, assertions, the generated unit and settings -- is evaluated for
# real without a nixpkgs checkout. scripts/eval-nixos-module.sh runs the scenarios below
# and checks the results.
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix --arg lib 'import /path/to/lib'
{ lib }:

let
  inherit (lib) mkOption types;

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

  evalWith =
    {
      withFuseEnable ? true,
    }:
    musicfsConfig:
    (lib.evalModules {
      specialArgs = { inherit pkgs utils; };
      modules = [
        ../nixos/module.nix
        (nixosStubs { inherit withFuseEnable; })
        { services.musicfs = musicfsConfig; }
      ];
    }).config;

  report = config: {
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
    service = config.systemd.services.musicfs or null;
    settings = config.services.musicfs.configFile.value;
    configFile = "${config.services.musicfs.configFile}";
    fuse = config.programs.fuse;
    users = config.users.users;
    groups = config.users.groups;
    systemPackages = map toString config.environment.systemPackages;
  };

  typical = {
    enable = true;
    origins = [
      {
        url = "/srv/music";
        name = "local";
      }
      {
        url = "sftp://music@nas.lan:2222/volume1/music";
        name = "nas";
        key_file = "/run/credentials/musicfs.service/nas-key";
        known_hosts = "/etc/musicfs/known_hosts";
      }
      {
        url = "s3://music/library";
        endpoint = "minio.lan:9000";
        secure = false;
      }
    ];
    environmentFile = "/run/secrets/musicfs.env";
    credentials.nas-key = "/run/secrets/musicfs-nas-key";
    settings = {
      log_level = "debug";
      cache.max_size = "20G";
      fuse.read_deadline = "5s";
      library.scan_interval = "30m";
    };
  };
in
{
  # A realistic configuration: three origins, secrets, tuned settings.
  typical = report (evalWith { } typical);
  # The same on a nixpkgs whose programs.fuse has no `enable` switch.
  olderFuseModule = report (evalWith { withFuseEnable = false; } typical);
  # Only the required bits; a different mount point with a space and a % in it.
  minimal = report (evalWith { } {
    enable = true;
    mountpoint = "/srv/My Music 100%";
    allowOther = false;
    origins = [ { url = "/data/music"; } ];
  });
  # Mistakes the assertions must catch.
  secretsInStore = report (evalWith { } {
    enable = true;
    origins = [ { url = "/srv/music"; } ];
    environmentFile = fakeStorePath "musicfs.env";
    credentials.key = fakeStorePath "key";
  });
  noOrigin = report (evalWith { } { enable = true; });
  # Disabled: the module must leave the system alone.
  disabled = report (evalWith { } { enable = false; }) // {
    settings = null;
  };
}
