{
  description = "MusicFS: a read-only FUSE view of a music library, organised by tags, with an offline chunk cache";

  # nixos-unstable rather than a release branch: python3Packages.tantivy entered nixpkgs in
  # December 2025, after nixos-25.11 branched off. flake.lock pins the exact revision.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # FUSE and pyfuse3 are Linux-only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      systemOf = pkgs: pkgs.stdenv.hostPlatform.system;
    in
    {
      overlays.default = final: _prev: { musicfs = final.callPackage ./nix/package.nix { }; };

      packages = forAllSystems (pkgs: rec {
        musicfs = pkgs.callPackage ./nix/package.nix { };
        default = musicfs;
      });

      # `nix run .#musicfs -- demo` mounts the demo library. Bare `nix run` prints the help
      # (the program alone would exit 2 with argparse's "arguments are required").
      apps = forAllSystems (
        pkgs:
        let
          program = lib.getExe self.packages.${systemOf pkgs}.musicfs;
          meta.description = "Mount a music library as a tagged, read-only FUSE tree";
        in
        {
          musicfs = {
            type = "app";
            inherit program meta;
          };
          default = {
            type = "app";
            program = "${pkgs.writeShellScript "musicfs-or-help" ''
              if [ "$#" -eq 0 ]; then set -- --help; fi
              exec ${program} "$@"
            ''}";
            inherit meta;
          };
        }
      );

      # The module itself does not know this flake; this wrapper gives it the package.
      # nixosModules.musicfs is the bare module for those who bring their own package.
      nixosModules = {
        musicfs = ./nixos/module.nix;
        default =
          { pkgs, ... }:
          {
            imports = [ ./nixos/module.nix ];
            services.musicfs.package = lib.mkDefault self.packages.${systemOf pkgs}.musicfs;
          };
      };

      # `nix flake check`: the package (with its layer-1 tests in checkPhase) and the NixOS
      # VM tests of nixos/tests/ (systemd, sshd and MinIO machines).
      checks = forAllSystems (
        pkgs:
        let
          vmTest = file: pkgs.testers.runNixOSTest (import file { inherit self; });
        in
        {
          package = self.packages.${systemOf pkgs}.musicfs;
        }
        // lib.mapAttrs (_: vmTest) (import ./nixos/tests/all.nix)
      );

      # Python with MusicFS' libraries and test tools, plus what layers 2 and 3 drive
      # (fusermount3, sshd, nft, ip); run `python -m musicfs` and `pytest` from the checkout.
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps:
              self.packages.${systemOf pkgs}.musicfs.pythonDependencies ps
              ++ (with ps; [
                pytest
                pytest-timeout
                hypothesis
                mypy
                moto
              ]
              # Layer 3 runs moto's S3 server (moto[server] in pyproject.toml's dev extras).
              ++ ps.moto.optional-dependencies.server)
            ))
            pkgs.ruff
            pkgs.fuse3
            pkgs.openssh
            pkgs.nftables
            pkgs.iproute2
          ];
        };
      });
    };
}
