# Evaluates nixos/module.nix with nothing but nixpkgs' lib: the NixOS options the module
# writes to (systemd.services, users, programs.fuse, assertions, ...) are declared as loose
# stand-ins (nix/stubs.nix) and pkgs holds fake derivations, so the module's own logic --
# option types, defaults, merging, assertions, the generated unit and settings -- is
# evaluated for real without a nixpkgs checkout. scripts/eval-nixos-module.sh runs the
# scenarios below and checks the results.
#
#   nix-instantiate --eval --strict --json nix/eval-module.nix --arg lib 'import /path/to/lib'
{ lib }:

let
  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs)
    fakeStorePath
    fakePackage
    pkgs
    utils
    nixosStubs
    ;

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
    etc = lib.mapAttrs (_: entry: toString entry.source) config.environment.etc;
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
  # nix/package.nix with a recording python3Packages: which libraries it asks for and how
  # it wraps the program. (Its `src`, a lib.fileset, needs Nix >= 2.14 and is left out.)
  package =
    let
      python3Packages = lib.genAttrs [
        "buildPythonApplication"
        "setuptools"
        "pytestCheckHook"
        "pytest-timeout"
        "hypothesis"
        "pyfuse3"
        "trio"
        "apsw"
        "lmdb"
        "mutagen"
        "tantivy"
        "minio"
        "asyncssh"
        "prometheus-client"
        "rich"
      ] (name: name) // { buildPythonApplication = attrs: attrs; };
      drv = import ../nix/package.nix {
        inherit lib python3Packages;
        fuse3 = fakePackage "fuse3";
        ffmpeg-headless = fakePackage "ffmpeg-headless";
      };
    in
    {
      inherit (drv)
        pname
        version
        dependencies
        build-system
        makeWrapperArgs
        disabledTestPaths
        ;
      inherit (drv.meta) mainProgram description;
    };

  # flake.nix's outputs over a stand-in nixpkgs: names of packages, apps and checks, and
  # the module wrapper (nixosModules.default must supply this flake's package).
  flake =
    let
      system = "x86_64-linux";
      stubNixpkgs = {
        inherit lib;
        legacyPackages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: {
          stdenv.hostPlatform.system = system;
          callPackage =
            _path: _args: fakePackage "musicfs" // { outPath = fakeStorePath "musicfs-${system}"; };
          # The script's text rides along in its path, for scripts/eval-nixos-module.sh to run.
          writeShellScript = name: text: fakePackage name // { outPath = "${fakeStorePath name}\n${text}"; };
          testers.runNixOSTest = test: fakePackage "vm-test" // { inherit test; };
        });
      };
      outputs = (import ../flake.nix).outputs { self = outputs; nixpkgs = stubNixpkgs; };
      withDefaultModule =
        (lib.evalModules {
          specialArgs = {
            inherit utils;
            pkgs = stubNixpkgs.legacyPackages.${system} // pkgs;
          };
          modules = [
            outputs.nixosModules.default
            (nixosStubs { withFuseEnable = true; })
            {
              services.musicfs = {
                enable = true;
                origins = [ { url = "/srv/music"; } ];
              };
            }
          ];
        }).config;
    in
    {
      systems = builtins.attrNames outputs.packages;
      packages = builtins.attrNames outputs.packages.${system};
      apps = lib.mapAttrs (_: app: app.program) outputs.apps.${system};
      checks = builtins.attrNames outputs.checks.${system};
      modules = builtins.attrNames outputs.nixosModules;
      defaultModulePackage = "${withDefaultModule.services.musicfs.package}";
      flakePackage = "${outputs.packages.${system}.musicfs}";
    };

  # A realistic configuration: three origins, secrets, tuned settings.
  typical = report (evalWith { } typical);
  # The same on a nixpkgs whose programs.fuse has no `enable` switch.
  olderFuseModule = report (evalWith { withFuseEnable = false; } typical);
  # Only the required bits; a different mount point with a space, a % and a $ in it, in a
  # folder whose name has them too (RequiresMountsFor=).
  minimal = report (evalWith { } {
    enable = true;
    mountpoint = "/srv/My Music 100% $HOME/library";
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
