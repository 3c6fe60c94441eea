# MusicFS as a Nix package: the Python application from pyproject.toml, its runtime
# libraries from nixpkgs, and fusermount3 reachable for unmounting stale mounts.
{
  lib,
  python3Packages,
  fuse3,
  ffmpeg-headless,
}:

let
  pyproject = lib.importTOML ../pyproject.toml;

  # The source and the check's exclusions, shared with CI's sandbox imitation.
  spec = lib.importTOML ./package.toml;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions (map (path: ../. + "/${path}") spec.source);
  };

  # The same list as [project.dependencies]; pythonRuntimeDepsCheckHook holds the two
  # together (it fails the build when a version bound in pyproject.toml is not met).
  pythonDependencies =
    ps: with ps; [
      pyfuse3
      trio
      apsw
      lmdb
      mutagen
      tantivy
      minio
      asyncssh
      prometheus-client
      rich
    ];
in
python3Packages.buildPythonApplication {
  pname = "musicfs";
  inherit (pyproject.project) version;
  pyproject = true;
  inherit src;

  build-system = [ python3Packages.setuptools ];

  dependencies = pythonDependencies python3Packages;

  # --suffix, not --prefix: on NixOS the setuid wrapper /run/wrappers/bin/fusermount3 must
  # win over the plain store binary (a non-root daemon can only mount and unmount through
  # it). The store copy is the fallback for root and for non-NixOS hosts.
  # The demo's audio fixtures need nothing here: they are the wheel's data files, installed
  # as $out/share/musicfs/fixtures, where musicfs.demo looks.
  makeWrapperArgs = [
    "--suffix"
    "PATH"
    ":"
    (lib.makeBinPath [ fuse3 ])
  ];

  # Layer 1 only (see nix/package.toml). It runs as the sandbox leaves it: HOME is the
  # nonexistent /homeless-shelter, TMPDIR the build folder, no network, only /bin/sh.
  # ffmpeg encodes the real FLAC/MP3/Ogg/Opus/M4A files the tag-read tests parse.
  nativeCheckInputs =
    (with python3Packages; [
      pytestCheckHook
      pytest-timeout
      hypothesis
    ])
    ++ [ ffmpeg-headless ];
  inherit (spec) disabledTestPaths;

  # For the dev shell: the same libraries in a python3.withPackages environment.
  passthru = { inherit pythonDependencies; };

  pythonImportsCheck = [
    "musicfs"
    "musicfs.cli"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "musicfs";
    platforms = lib.platforms.linux;
  };
}
