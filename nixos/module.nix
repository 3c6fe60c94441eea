# NixOS module: services.musicfs mounts a music library read-only, organised by tags.
#
# How FUSE works here (the choices every FUSE daemon unit has to make):
#  * The daemon runs as its own unprivileged user and mounts through NixOS' setuid wrapper
#    /run/wrappers/bin/fusermount3 (nixpkgs' libfuse tries that path first), like the kubo
#    module does for its /ipfs mount. It holds no capabilities itself.
#  * No option that gives the unit its own mount namespace (ProtectSystem, ProtectHome,
#    PrivateTmp, PrivateDevices, ReadWritePaths, ...): a FUSE mount made inside such a
#    namespace is invisible to every other process on the machine.
#  * No option that implies NoNewPrivileges (SystemCallFilter, RestrictAddressFamilies,
#    LockPersonality, MemoryDenyWriteExecute, ...: systemd implies it for a unit without
#    CAP_SYS_ADMIN): the setuid wrapper would silently lose its privileges and every
#    mount would fail. What remains is a separate user, a closed device policy that
#    allows /dev/fuse, a private umask and no credentials in the Nix store.
#  * Stale mounts left by a killed daemon are detached lazily (`fusermount3 -uz`) as root
#    before each start and after each stop, so a restart never meets "Transport endpoint
#    is not connected".
{
  config,
  lib,
  options,
  pkgs,
  utils,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  cfg = config.services.musicfs;

  settingsFormat = pkgs.formats.toml { };

  unitName = "musicfs.service";
  credentialsDirectory = "/run/credentials/${unitName}";

  absolutePath = types.strMatching "/.*";

  originType = types.submodule {
    freeformType = settingsFormat.type;
    options = {
      url = mkOption {
        type = types.str;
        example = "sftp://music@nas.lan/srv/music";
        description = ''
          Where the library lives: a local folder (`/srv/music` or `file:///srv/music`),
          `sftp://user@host[:port]/path` or `s3://bucket/prefix`. Other keys of the
          daemon's `[[origin]]` table (`key_file`, `known_hosts`, `endpoint`, `region`,
          `secure`, `credentials_file`, ...) can be set next to it.
        '';
      };
      name = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "nas";
        description = "Name used in logs and status; the daemon derives one when unset.";
      };
    };
  };

  # TOML has no null: drop the origin options left unset.
  renderOrigin = origin: lib.filterAttrs (_: value: value != null) origin;

  configFile = settingsFormat.generate "musicfs.toml" cfg.settings;
  # A stable path, as in dist/musicfs.service: a changed configuration is then a reload
  # (SIGHUP: the daemon re-reads it without unmounting), not a restart.
  configPath = "/etc/musicfs/config.toml";

  fusermount3 = "${lib.getBin pkgs.fuse3}/bin/fusermount3";
  mountpointArg = utils.escapeSystemdExecArg cfg.mountpoint;
  # RequiresMountsFor= splits its value at spaces (honouring quotes) and expands %
  # specifiers, but knows no $ variables: quoted, with % doubled -- not an Exec quoting.
  requiresMountsForArg = lib.replaceStrings [ "%" ] [ "%%" ] (builtins.toJSON (dirOf cfg.mountpoint));

  inStore = path: lib.hasPrefix "${builtins.storeDir}/" path;
in
{
  options.services.musicfs = {
    enable = mkEnableOption "MusicFS, a read-only FUSE view of a music library organised by tags";

    package = mkOption {
      type = types.package;
      default =
        pkgs.musicfs or (throw ''
          services.musicfs.package: this nixpkgs has no `musicfs`. Import the module through
          the MusicFS flake (nixosModules.default sets the package) or set the option.
        '');
      defaultText = lib.literalExpression "pkgs.musicfs";
      description = "The MusicFS package to run.";
    };

    mountpoint = mkOption {
      type = absolutePath;
      default = "/mnt/music";
      description = ''
        Where the tagged tree appears. The folder is created (owned by
        {option}`services.musicfs.user`) before the daemon starts.
      '';
    };

    origins = mkOption {
      type = types.listOf originType;
      default = [ ];
      example = lib.literalExpression ''
        [
          { url = "/srv/music"; name = "local"; }
          {
            url = "sftp://music@nas.lan/volume1/music";
            name = "nas";
            key_file = "''${config.services.musicfs.credentialsDirectory}/nas-key";
            known_hosts = "/etc/musicfs/known_hosts";
          }
        ]
      '';
      description = ''
        The library's origins, earlier ones preferred. Rendered as the `[[origin]]`
        tables of the configuration file.
      '';
    };

    allowOther = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Let users other than {option}`services.musicfs.user` (players, root) read the
        mount. Sets `fuse.allow_other` and `programs.fuse.userAllowOther`. Without it only
        the daemon's own user can see the tree.
      '';
    };

    user = mkOption {
      type = types.str;
      default = "musicfs";
      description = ''
        User the daemon runs as; created when left at `musicfs`. It must be able to read
        local origins (add it to their group, for instance).
      '';
    };

    group = mkOption {
      type = types.str;
      default = "musicfs";
      description = "Group the daemon runs as; created when left at `musicfs`.";
    };

    environmentFile = mkOption {
      type = types.nullOr absolutePath;
      default = null;
      example = "/run/secrets/musicfs.env";
      description = ''
        A file of `NAME=value` lines (systemd `EnvironmentFile=`) read when the daemon
        starts, e.g. `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` for S3
        origins. Give a path as a string, outside the Nix store: the store is
        world-readable.
      '';
    };

    credentials = mkOption {
      type = types.attrsOf absolutePath;
      default = { };
      example = {
        nas-key = "/run/secrets/musicfs-nas-key";
        s3-credentials = "/run/secrets/musicfs-s3";
      };
      description = ''
        Secret files handed to the daemon with systemd `LoadCredential=`: each
        `name = path` pair appears, readable only by the service, as
        `''${config.services.musicfs.credentialsDirectory}/name`. Point an origin's
        `key_file` or `credentials_file` there. Paths are strings outside the Nix store.
      '';
    };

    credentialsDirectory = mkOption {
      type = types.str;
      default = credentialsDirectory;
      readOnly = true;
      description = "Where the daemon finds the files listed in {option}`services.musicfs.credentials`.";
    };

    settings = mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          log_level = mkOption {
            type = types.enum [
              "debug"
              "info"
              "warning"
              "error"
            ];
            default = "info";
            description = "How much the daemon logs (to the journal).";
          };
        };
      };
      default = { };
      example = {
        cache.max_size = "20G";
        fuse.read_deadline = "5s";
        library.scan_interval = "30m";
      };
      description = ''
        The daemon's TOML configuration (see the README's configuration reference),
        rendered to the file given to `musicfs mount --config`. `mountpoint`,
        `fuse.allow_other` and `origin` are filled from the options above; the state,
        cache and runtime folders come from systemd (`/var/lib/musicfs`,
        `/var/cache/musicfs`, `/run/musicfs`). An unknown key makes the daemon refuse to
        start with a message naming it.
      '';
    };

    configFile = mkOption {
      type = types.package;
      default = configFile;
      defaultText = lib.literalMD "generated from {option}`services.musicfs.settings`";
      readOnly = true;
      description = "The configuration file the daemon reads.";
    };
  };

  config = mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = cfg.settings ? origin && cfg.settings.origin != [ ];
            message = "services.musicfs.origins: give at least one origin.";
          }
          {
            assertion = !(cfg.environmentFile != null && inStore cfg.environmentFile);
            message = "services.musicfs.environmentFile must not be in the Nix store (it is world-readable).";
          }
          {
            assertion = !lib.any inStore (lib.attrValues cfg.credentials);
            message = "services.musicfs.credentials must not point into the Nix store (it is world-readable).";
          }
          {
            assertion = !(lib.hasPrefix "${builtins.storeDir}/" cfg.mountpoint);
            message = "services.musicfs.mountpoint cannot be in the Nix store.";
          }
        ];

        services.musicfs.settings = {
          mountpoint = cfg.mountpoint;
          fuse.allow_other = cfg.allowOther;
          origin = map renderOrigin cfg.origins;
        };

        # user_allow_other only matters to the setuid fusermount3 the daemon mounts with.
        programs.fuse.userAllowOther = mkIf cfg.allowOther true;

        environment.systemPackages = [ cfg.package ];
        environment.etc."musicfs/config.toml".source = configFile;

        users.users = mkIf (cfg.user == "musicfs") {
          musicfs = {
            isSystemUser = true;
            group = cfg.group;
            description = "MusicFS daemon";
          };
        };
        users.groups = mkIf (cfg.group == "musicfs") { musicfs = { }; };

        systemd.services.musicfs = {
          description = "MusicFS: tagged read-only view of a music library";
          wantedBy = [ "multi-user.target" ];
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          # The folder holding the mount point may itself be a mount (a separate disk).
          unitConfig.RequiresMountsFor = [ requiresMountsForArg ];
          # Only the configuration changed: reload (SIGHUP), players keep their mount.
          reloadTriggers = [ configFile ];
          # Crash loops stop after 10 starts in 5 minutes instead of spinning forever.
          startLimitIntervalSec = 300;
          startLimitBurst = 10;

          # /run/wrappers/bin first, so libfuse and the daemon's own stale-mount cleanup
          # find the setuid fusermount3 (the package's wrapper appends the plain one).
          path = [ "/run/wrappers" ];

          serviceConfig = {
            # READY=1 once the mount answers; WATCHDOG=1 only while the event loop and a
            # probe of the mount answer, so a wedged daemon is restarted by systemd.
            Type = "notify";
            NotifyAccess = "main";
            WatchdogSec = lib.mkDefault "30s";
            Restart = "on-failure";
            RestartSec = lib.mkDefault "2s";
            # 2 = bad configuration or mount point: restarting cannot fix it.
            RestartPreventExitStatus = 2;
            # 3 = a second SIGTERM cut the drain short: a stop, not a failure.
            SuccessExitStatus = 3;

            ExecStartPre = [
              # "-": nothing mounted is fine. "+": as root, whoever owns a stale mount.
              "-+${fusermount3} -u -z ${mountpointArg}"
              "+${lib.getExe' pkgs.coreutils "install"} -d -m 0755 -o ${cfg.user} -g ${cfg.group} ${mountpointArg}"
            ];
            ExecStart = utils.escapeSystemdExecArgs [
              (lib.getExe cfg.package)
              "mount"
              "--config"
              configPath
            ];
            ExecReload = "${lib.getExe' pkgs.coreutils "kill"} -HUP $MAINPID";
            ExecStopPost = [ "-+${fusermount3} -u -z ${mountpointArg}" ];
            # Above the daemon's drain window (fuse.drain_timeout, 5 s by default) plus
            # closing the stores, so a graceful shutdown is never cut short by SIGKILL.
            TimeoutStopSec = lib.mkDefault "30s";
            TimeoutStartSec = lib.mkDefault "120s";

            User = cfg.user;
            Group = cfg.group;
            StateDirectory = "musicfs";
            StateDirectoryMode = "0700";
            CacheDirectory = "musicfs";
            CacheDirectoryMode = "0700";
            RuntimeDirectory = "musicfs";
            RuntimeDirectoryMode = "0700";
            UMask = "0077";
            LimitNOFILE = lib.mkDefault 65536;

            EnvironmentFile = mkIf (cfg.environmentFile != null) cfg.environmentFile;
            LoadCredential = lib.mapAttrsToList (name: path: "${name}:${path}") cfg.credentials;

            # Hardening that keeps the mount visible system-wide (see the top of the file).
            DevicePolicy = "closed";
            DeviceAllow = [ "/dev/fuse rw" ];
            RemoveIPC = true;
          };
        };
      }

      # nixpkgs moved the fusermount wrappers behind programs.fuse.enable and then turned it
      # off by default (nixpkgs#528369); older releases always install them. Ask for them
      # where the switch exists.
      (lib.optionalAttrs (lib.hasAttrByPath [ "programs" "fuse" "enable" ] options) {
        programs.fuse.enable = true;
      })
    ]
  );
}
